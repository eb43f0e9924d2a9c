#!/bin/sh
# Install the reverse proxies tests/e2e/test_proxies.py runs in front of Threshold:
# nginx and HAProxy (Debian packages "nginx" and "haproxy"). Idempotent: installs
# only when one is missing, running apt-get update once. Needs root (CI runs as root).
# The packages' own services are not started: the tests run each proxy in the
# foreground with a throwaway config.
set -eu

missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"

if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "proxy_setup.sh: missing$missing and installing needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Keep the packages from starting their system services (no init here, and the tests
# want the ports to themselves): policy-rc.d exit 101 means "do not start".
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
status=0
{
    apt-get update -q &&
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing
} || status=$?
if [ -n "$created_policy" ]; then
    rm -f "$policy"
fi
[ "$status" -eq 0 ] || exit "$status"

for tool in nginx haproxy; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "proxy_setup.sh: apt-get finished but $tool is still missing" >&2
        exit 1
    fi
done
