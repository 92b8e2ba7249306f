#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmark need, only if it is missing:
#   redis-server (redis-server), redis-tools (redis-cli, redis-benchmark), nutcracker (twemproxy,
#   benchmark only, optional), curl (demo), zookeeper (ZooKeeper 3.8 server jars and zkCli.sh for
#   the ZooKeeper tests; pulls in a Java runtime if there is none), prometheus (prometheus and
#   promtool: the alert-rule checks and the fleet monitoring test), podman (the image step:
#   scripts/build-image.sh builds the FROM-scratch image without a daemon).
# Idempotent and quiet: does nothing when everything is there; otherwise one `apt-get update`
# and one `apt-get install`. Debian/Ubuntu only; elsewhere it says what to install.
set -euo pipefail

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

required=()
have redis-server || required+=(redis-server)
{ have redis-cli && have redis-benchmark; } || required+=(redis-tools)
have curl || required+=(curl)
{ [ -f /usr/share/java/zookeeper.jar ] && [ -x /usr/share/zookeeper/bin/zkCli.sh ]; } ||
    required+=(zookeeper)
{ have prometheus && have promtool; } || required+=(prometheus)
have podman || required+=(podman)
optional=()
have nutcracker || optional+=(nutcracker)

if [ "${#required[@]}" -eq 0 ] && [ "${#optional[@]}" -eq 0 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: no apt-get here; please install: ${required[*]} ${optional[*]}" >&2
    [ "${#required[@]}" -eq 0 ] # missing optional packages are not an error
    exit
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "install-deps: not root and no sudo; please install: ${required[*]} ${optional[*]}" >&2
        exit 1
    fi
fi

apt_get() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq \
        -o Dpkg::Use-Pty=0 "$@"
}

echo "install-deps: installing ${required[*]} ${optional[*]}" >&2
apt_get update >/dev/null
if [ "${#required[@]}" -gt 0 ]; then
    apt_get install --no-install-recommends "${required[@]}" >/dev/null
fi
if [ "${#optional[@]}" -gt 0 ]; then
    # nutcracker is only for the benchmark's twemproxy comparison: a failure is a warning.
    if ! apt_get install --no-install-recommends "${optional[@]}" >/dev/null; then
        echo "install-deps: could not install ${optional[*]}; the benchmark will skip twemproxy" >&2
    fi
fi
