#!/bin/sh
# Install the command-line HTTP/2 clients the e2e tests drive: curl, and nghttp and
# h2load (Debian package nghttp2-client). Idempotent: installs only what is missing,
# running apt-get update once when something is. Needs root (CI runs as root).
set -eu

missing=""
command -v curl >/dev/null 2>&1 || missing="$missing curl"
if ! command -v nghttp >/dev/null 2>&1 || ! command -v h2load >/dev/null 2>&1; then
    missing="$missing nghttp2-client"
fi

if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "tools.sh: missing$missing and installing needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing

for tool in curl nghttp h2load; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "tools.sh: apt-get finished but $tool is still missing" >&2
        exit 1
    fi
done
