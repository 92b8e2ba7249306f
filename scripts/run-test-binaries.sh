#!/usr/bin/env bash
# Runs every test binary of `cargo test --all-targets`, several at a time.
#
#   scripts/run-test-binaries.sh            # TEST_LANES binaries at once (default 3)
#   scripts/run-test-binaries.sh cli tls    # only these test targets
#
# Why not plain `cargo test`: it runs the binaries one after another, and most of our suite's
# time is spent waiting on real servers and timers (a frozen follower, a session timeout,
# a black-holed region), not on the CPU. Each binary still runs its own tests with the
# default thread count, and every test uses its own servers on free loopback ports, so
# binaries can run side by side. The slowest binaries start first (longest-first keeps the
# lanes even); each binary's output is printed in one piece when it ends, with the usual
# `test result:` lines that scripts/test.sh counts.
set -uo pipefail
cd "$(dirname "$0")/.."
lanes=${TEST_LANES:-3}

# Build first, with the compiler's messages on screen if it fails.
cargo test --all-targets --no-run || exit $?
mapfile -t bins < <(cargo test --all-targets --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null) | .executable')
if [ "${#bins[@]}" -eq 0 ]; then
    echo "run-test-binaries: no test binaries found" >&2
    exit 1
fi

if [ "$#" -gt 0 ]; then
    wanted=" $* "
    kept=()
    for b in "${bins[@]}"; do
        name=$(basename "$b" | sed 's/-[0-9a-f]*$//')
        [[ "$wanted" == *" $name "* ]] && kept+=("$b")
    done
    bins=("${kept[@]}")
fi

# Known slow binaries (seconds measured on the 2-core CI machine) go first.
slow_first=(disaster far_follower zookeeper_faults zookeeper_resync cluster_restart
    zookeeper_proxy redis_resync cluster_converge cluster_freeze zookeeper_fidelity
    zookeeper_follower_ensemble migrate_online zookeeper_listener_tls redis_failover
    redis_sentinel leader_blackhole zookeeper_failover backup)
rank() {
    local name i
    name=$(basename "$1" | sed 's/-[0-9a-f]*$//')
    for i in "${!slow_first[@]}"; do
        if [ "${slow_first[$i]}" = "$name" ]; then
            echo "$i $1"
            return
        fi
    done
    echo "99 $1"
}
mapfile -t ordered < <(for b in "${bins[@]}"; do rank "$b"; done | sort -n -s -k1,1 | cut -d' ' -f2-)

out_dir=$(mktemp -d)
trap 'rm -rf "$out_dir"' EXIT
failed=0

run_one() {
    local bin="$1" out="$2" start=$SECONDS code=0
    "$bin" >"$out" 2>&1 || code=$?
    echo "$code $((SECONDS - start))" >"$out.done"
}

report() {
    local bin="$1" out="$2" code secs
    read -r code secs <"$out.done"
    echo
    echo "     Running $(basename "$bin") (${secs} s, exit ${code})"
    cat "$out"
    [ "$code" -eq 0 ] || failed=1
}

declare -A running=()
i=0
for bin in "${ordered[@]}"; do
    i=$((i + 1))
    out="$out_dir/$i.log"
    while [ "$(jobs -rp | wc -l)" -ge "$lanes" ]; do
        wait -n 2>/dev/null || true
    done
    for k in "${!running[@]}"; do
        if [ -f "$k.done" ]; then
            report "${running[$k]}" "$k"
            unset "running[$k]"
        fi
    done
    run_one "$bin" "$out" &
    running[$out]=$bin
done
wait
for k in "${!running[@]}"; do
    report "${running[$k]}" "$k"
done
exit "$failed"
