#!/usr/bin/env bash
# Coverage-guided fuzzing smoke run of the proxy's client-input decoders, on stable Rust:
# builds each target in fuzz_targets/ against libFuzzer (libfuzzer-sys) with LLVM's
# SanitizerCoverage switched on through stable `-C passes` / `-C llvm-args` flags, then runs
# it for FUZZ_SECONDS (default 10) from its committed corpus in corpus/<target>/. A crash
# (panic, failed assertion, overflow) fails the run and leaves the input in artifacts/.
#
#   fuzz/smoke.sh                      # every target, 10 s each
#   FUZZ_SECONDS=600 fuzz/smoke.sh resp_request
#
# New inputs found go to a temporary directory, not the committed corpus; to grow the
# corpus, run a target by hand with corpus/<target> as its first directory.
set -euo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SECONDS:-10}
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(resp_request zk_request)

# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzz/smoke.sh: a C++ compiler (g++) is needed" >&2
        exit 1
    fi
fi

host=$(rustc -vV | sed -n 's/^host: //p')
# libFuzzer's own speed hardly matters for a short run; -O1 (after cc's -O3) cuts its build
# by about a third.
export CXXFLAGS="${CXXFLAGS:-} -O1"
# Its own target directory: the instrumented build shares nothing with the normal one.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
# `--target` keeps these flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --locked --target "$host" --bins

mkdir -p artifacts
for t in "${targets[@]}"; do
    found=$(mktemp -d)
    echo "fuzz/smoke.sh: $t for ${secs}s"
    status=0
    "$CARGO_TARGET_DIR/$host/release/$t" "$found" "corpus/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -artifact_prefix="artifacts/$t-" -print_final_stats=1 2>"$found.log" || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY)' "$found.log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$found.log" >&2
        echo "fuzz/smoke.sh: $t FAILED (exit $status); the input is in fuzz/artifacts/" >&2
        rm -rf "$found" "$found.log"
        exit "$status"
    fi
    rm -rf "$found" "$found.log"
done
