#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test target against real
# redis-server processes (installed by scripts/install-deps.sh when missing).
#
#   scripts/test.sh
#
# Every step runs even if an earlier one fails; a summary lists them, and the exit code is the
# first failing step's (0 when all pass).
set -uo pipefail
cd "$(dirname "$0")/.."

if ! scripts/install-deps.sh; then
    echo "test.sh: installing dependencies failed" >&2
    exit 1
fi

names=()
codes=()
first_failure=0

step() {
    local name="$1"
    shift
    echo
    echo "==> $name: $*"
    local start=$SECONDS code=0
    "$@" || code=$?
    names+=("$name ($((SECONDS - start)) s)")
    codes+=("$code")
    if [ "$code" -ne 0 ] && [ "$first_failure" -eq 0 ]; then
        first_failure=$code
    fi
}

step "format" cargo fmt --check
step "clippy" cargo clippy --all-targets -- -D warnings
step "tests" cargo test --all-targets --no-fail-fast

echo
echo "==> summary"
for i in "${!names[@]}"; do
    if [ "${codes[$i]}" -eq 0 ]; then
        printf '  %-6s %s\n' "ok" "${names[$i]}"
    else
        printf '  %-6s %s (exit %s)\n' "FAILED" "${names[$i]}" "${codes[$i]}"
    fi
done
if [ "$first_failure" -ne 0 ]; then
    echo "test.sh: FAILED (fix the steps marked FAILED above; \`cargo fmt\` fixes formatting)" >&2
else
    echo "test.sh: all passed"
fi
exit "$first_failure"
