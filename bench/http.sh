#!/usr/bin/env bash
# HTTP load comparison of the stacks in bench/servers: builds the server, installs wrk and
# h2load if missing, runs interleaved rounds with the server pinned to CPU 0 and the load
# client (wrk, h2load, bench-server grpc-load / ws-load) to CPU 1, and prints medians,
# ratios, server CPU per request (per call, per message) and peak RSS. Writes
# bench/results/http.md and bench/results/http.svg. Not part of CI: it takes about ten
# minutes and wants a quiet box.
#
#   bench/http.sh                      # every row of every protocol, 5 rounds of 5 s
#   ROUNDS=3 SECONDS_PER_RUN=3 bench/http.sh
#   STACKS="bare context full" bench/http.sh       # HTTP/1.1 rows only
#   H2_STACKS="bare full" GRPC_STACKS="grpc-bare grpc-context-log" WS_STACKS=ws-bare bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    echo "wrk not found; installing it from Debian's packages" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
if ! command -v h2load >/dev/null; then
    echo "h2load not found; installing it from Debian's packages (nghttp2-client)" >&2
    apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null
fi
if [ "$(nproc)" -lt 2 ]; then
    echo "needs two CPUs: one for the server, one for wrk" >&2
    exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reqscope-target}"
cargo build --release -q -p reqscope-bench-servers
exec python3 bench/http.py "$CARGO_TARGET_DIR/release/bench-server" "$@"
