#!/bin/sh
# Install headless Chromium for tests/e2e/test_demo.py (Debian package "chromium").
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (CI runs as root).
set -eu

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "browser_setup.sh: $CHROMIUM is missing and installing it needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "browser_setup.sh: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
