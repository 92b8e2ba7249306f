#!/usr/bin/env bash
# Builds the shipped container image offline and proves it (the "image" step of
# scripts/test.sh):
#   1. a statically linked release binary (glibc, `+crt-static`; no PT_INTERP, no NEEDED);
#   2. `podman build` of deploy/image/Containerfile (FROM scratch: needs no registry and no
#      container runtime) with the files the Dockerfile's final stage copies; and of the
#      Dockerfile's final stage itself (its builder stage swapped for that binary): both
#      images must have the same files (modes, owners, sizes) and the same config;
#   3. from the image: its config (User 10001:10001) and size, then its exported filesystem:
#      `statemirror --version` and `check-config` on the shipped example, /etc/passwd;
#   4. chrooted into that filesystem as uid 10001 with nothing but what the image has
#      (no libc, no NSS): --version, then `verify` against two local redis-servers, one
#      named through DNS (a resolv.conf with Kubernetes' search domains pointing at
#      deploy/image/test-dns.py on a loopback address), one through /etc/hosts, both
#      resolved by statemirror itself; and the clear error for a name that cannot be
#      resolved without a resolv.conf.
# The files step 4 adds (hosts, resolv.conf, test configs) go into the exported copy only,
# never into the image.
#
#   scripts/build-image.sh
#
# Root only (podman with its own storage under the target directory, chroot). The release
# build is cached in ${CARGO_TARGET_DIR:-target}/image; the podman storage there is
# recreated on every run. Prints "build-image: OK" last when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "build-image: FAILED: $*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    fail "must run as root (podman storage, chroot)"
fi
if ! command -v podman >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
    scripts/install-deps.sh || fail "scripts/install-deps.sh could not install podman / redis-server"
fi
command -v podman >/dev/null 2>&1 || fail "podman is not installed"

target_dir="${CARGO_TARGET_DIR:-target}/image"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
work="$target_dir/podman"
triple="$(rustc -vV | sed -n 's/^host: //p')"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
image="localhost/statemirror:$version"

# --- 1. the static binary ------------------------------------------------------------------
start=$SECONDS
echo "build-image: cargo build --release (static, $triple) in $target_dir"
# getrandom's default Linux backend finds getrandom(2) with dlsym, which a static binary
# cannot: it would fall back to /dev/urandom (absent in a bare chroot, and a file a container
# must provide). The linux_getrandom backend calls it directly (kernel 3.17 and later).
# No debug info (the image strips it anyway): a faster build.
RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR="$target_dir" \
    cargo build --release --locked --bin statemirror --target "$triple"
echo "build-image: release build took $((SECONDS - start)) s"
bin="$target_dir/$triple/release/statemirror"

# --- 2. the image ----------------------------------------------------------------------------
rm -rf "$work"
ctx="$work/context"
mkdir -p "$ctx/rootfs"
cp -R deploy/image/rootfs/. "$ctx/rootfs/"
install -D -m 0755 "$bin" "$ctx/rootfs/usr/local/bin/statemirror"
strip --strip-debug "$ctx/rootfs/usr/local/bin/statemirror"
install -D -m 0644 config/redis.toml "$ctx/rootfs/etc/statemirror/statemirror.toml"

podman=(podman --root "$work/storage" --runroot "$work/run" --storage-driver vfs
    --events-backend file --log-level error)
"${podman[@]}" build --quiet -f deploy/image/Containerfile -t "$image" "$ctx" >/dev/null ||
    fail "podman build"
user="$("${podman[@]}" image inspect --format '{{.Config.User}}' "$image")"
[ "$user" = "10001:10001" ] || fail "image User is '$user', want 10001:10001"
echo "build-image: image $image, User $user"

# The Dockerfile's final stage, as written, with its builder stage (which needs a registry)
# replaced by the binary built above: it must give the same files and the same config.
dctx="$work/dockerfile-context"
mkdir -p "$dctx/deploy/image" "$dctx/config" "$dctx/out"
cp -R deploy/image/rootfs "$dctx/deploy/image/"
cp config/redis.toml "$dctx/config/"
cp "$ctx/rootfs/usr/local/bin/statemirror" "$dctx/out/statemirror"
awk '/^FROM .* AS builder/ { print "FROM scratch AS builder"; print "COPY out/statemirror /out/statemirror"; skip = 1; next }
     /^FROM scratch/ { skip = 0 }
     !skip' Dockerfile >"$dctx/Dockerfile"
"${podman[@]}" build --quiet -f "$dctx/Dockerfile" -t localhost/statemirror-dockerfile:check \
    "$dctx" >/dev/null || fail "podman build of the Dockerfile's final stage"
layout() { # the files of image $1: type and mode, owner, size, path
    local c
    c="$("${podman[@]}" create "$1")"
    "${podman[@]}" export "$c" | tar -tvf - | awk '{ print $1, $2, $3, $6 }' | sort -k 4
    "${podman[@]}" rm "$c" >/dev/null
}
config() { "${podman[@]}" image inspect --format '{{json .Config}}' "$1"; }
if ! diff <(layout "$image") <(layout localhost/statemirror-dockerfile:check) ||
    ! diff <(config "$image") <(config localhost/statemirror-dockerfile:check); then
    fail "deploy/image/Containerfile and the Dockerfile's final stage give different images (above)"
fi
echo "build-image: the Dockerfile's final stage gives the same files and config"

# --- 3. its filesystem -----------------------------------------------------------------------
fs="$work/fs"
mkdir -p "$fs"
cid="$("${podman[@]}" create "$image")"
"${podman[@]}" export "$cid" | tar -x -C "$fs"
"${podman[@]}" rm "$cid" >/dev/null
echo "build-image: image files:"
(cd "$fs" && find . -type f -printf '  /%P %s bytes\n' | sort)
sm="$fs/usr/local/bin/statemirror"
[ -x "$sm" ] || fail "no /usr/local/bin/statemirror in the image"
if readelf -l "$sm" | grep -q INTERP; then
    fail "the binary has a PT_INTERP (dynamic loader): not static"
fi
if readelf -d "$sm" | grep -q NEEDED; then
    fail "the binary needs shared libraries: $(readelf -d "$sm" | grep NEEDED)"
fi
echo "build-image: static: no INTERP program header, no NEEDED entry"
"$sm" --version || fail "statemirror --version"
"$sm" check-config --config "$fs/etc/statemirror/statemirror.toml" ||
    fail "check-config on the shipped /etc/statemirror/statemirror.toml"
grep -q '^statemirror:x:10001:10001:' "$fs/etc/passwd" || fail "no uid 10001 in /etc/passwd"
grep -q '^statemirror:x:10001:' "$fs/etc/group" || fail "no gid 10001 in /etc/group"

# --- 4. run inside it, as uid 10001, with no libc ----------------------------------------------
chroot_bin="$(command -v chroot)"
in_image() {
    env -i "$chroot_bin" --userspec=10001:10001 "$fs" /usr/local/bin/statemirror "$@"
}
in_image --version || fail "statemirror --version in a chroot of the image as uid 10001"
[ ! -e "$fs/lib" ] && [ ! -e "$fs/lib64" ] && [ ! -e "$fs/usr/lib" ] ||
    fail "the image has a library directory"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
# Starts a redis-server on a free loopback port: sets redis_port.
start_redis() {
    local pid
    for _ in 1 2 3 4 5 6 7 8; do
        redis_port=$((20000 + RANDOM % 20000))
        redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
            --daemonize no >"$work/redis-$redis_port.log" 2>&1 &
        pid=$!
        pids+=("$pid")
        for _ in $(seq 50); do
            # Ours, not another test's server on the same port.
            if redis-cli -p "$redis_port" info server 2>/dev/null | grep -q "^process_id:${pid}[^0-9]*$"; then
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
    done
    return 1
}
start_redis || fail "cannot start a redis-server"
leader_port=$redis_port
start_redis || fail "cannot start a redis-server"
follower_port=$redis_port
# A DNS server on a loopback address, port 53, that knows one name: what a pod's cluster DNS
# answers for `redis-leader.nifi.svc` (found through the search domains, as in Kubernetes).
dns_ip="127.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1)).53"
python3 deploy/image/test-dns.py "$dns_ip" "$work/dns.ready" >"$work/dns.log" 2>&1 &
pids+=("$!")
for _ in $(seq 50); do
    [ -e "$work/dns.ready" ] && break
    sleep 0.1
done
[ -e "$work/dns.ready" ] || fail "cannot start the test DNS server on $dns_ip:53: $(cat "$work/dns.log")"

# The leader by a DNS name (resolv.conf: search domains, ndots), the follower by a name only
# the hosts file knows: a pod's view. The image itself has neither file.
etc="$fs/etc"
printf '127.0.0.1 localhost\n127.0.0.1 redis-follower.statemirror.test\n' >"$etc/hosts"
printf 'search nifi.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5 timeout:2 attempts:2\n' \
    "$dns_ip" >"$etc/resolv.conf"
printf '[admin]\nlisten = "127.0.0.1:0"\n[redis]\nlisten = "127.0.0.1:0"\nleader = "redis://%s:%s"\nfollower = "redis://%s:%s"\n' \
    redis-leader.nifi.svc "$leader_port" redis-follower.statemirror.test "$follower_port" \
    >"$etc/statemirror/names.toml"
printf '[admin]\nlisten = "127.0.0.1:0"\n[redis]\nlisten = "127.0.0.1:0"\nleader = "redis://%s:%s"\nfollower = "redis://%s:%s"\n' \
    redis-follower.statemirror.test "$follower_port" redis.nifi.svc "$leader_port" \
    >"$etc/statemirror/unresolvable.toml"
chmod 0644 "$etc/hosts" "$etc/resolv.conf" "$etc/statemirror/names.toml" \
    "$etc/statemirror/unresolvable.toml"
if ! out="$(in_image verify --config /etc/statemirror/names.toml 2>&1)"; then
    echo "$out" >&2
    fail "verify against backends named through DNS and /etc/hosts, in the image as uid 10001"
fi
echo "build-image: in the image: verify reached redis-leader.nifi.svc (DNS, resolv.conf search domains) and redis-follower.statemirror.test (/etc/hosts)"
rm -f "$etc/resolv.conf"
code=0
out="$(in_image verify --config /etc/statemirror/unresolvable.toml 2>&1)" || code=$?
if [ "$code" -eq 0 ] || ! grep -q 'cannot resolve "redis.nifi.svc"' <<<"$out" ||
    ! grep -q 'resolv.conf' <<<"$out"; then
    echo "$out" >&2
    fail "an unresolvable name without resolv.conf: want a 'cannot resolve' error (exit $code)"
fi
echo "build-image: in the image: without resolv.conf, redis.nifi.svc is a clear error (exit $code):"
grep -m 1 'cannot resolve' <<<"$out" | cut -c 1-400

size="$("${podman[@]}" image inspect --format '{{.Size}}' "$image")"
echo "build-image: binary $(stat -c %s "$sm") bytes; image size $size bytes ($(((size + 524288) / 1048576)) MiB)"
echo "build-image: OK ($((SECONDS - start)) s)"
