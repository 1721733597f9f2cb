#!/usr/bin/env bash
# Instructions per request (and per stamped event) of the stacks in bench/servers, counted by
# valgrind's callgrind: stable from run to run, so regressions of a few percent show. Writes
# bench/results/instructions.{md,json}; with --check, compares with the committed baseline and
# fails on a regression instead (what .ci/run does).
#
#   bench/instructions.sh            # measure and write the baseline
#   bench/instructions.sh --check    # measure and compare
#   bench/instructions.sh --time 9   # the same requests natively: CPU µs, 9 interleaved rounds
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind not found; installing it from Debian's packages" >&2
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reqscope-target}"
cargo build --profile bench-release -q -p reqscope-bench-servers
binary="$CARGO_TARGET_DIR/bench-release/bench-server"
if [ "${1:-}" = "--check" ]; then
    exec python3 bench/instructions.py "$binary" --check bench/results/instructions.json
fi
exec python3 bench/instructions.py "$binary" "$@"
