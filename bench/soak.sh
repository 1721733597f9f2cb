#!/usr/bin/env bash
# Soak test (not in CI): REQUESTS mixed requests (default 1,000,000) against the example server
# in release mode — health, users, the current user, bad tokens, invalid request ids, fanout,
# streams, 404s, bad user ids, two-hop chains — over CONNECTIONS keep-alive connections
# (default 32). Checks every answer, samples the server's RSS every 5 s, then stops the server
# with SIGTERM and checks its stdout: every request's lines present, each line belonging to
# its own request. Writes bench/results/soak.md.
#
#   bench/soak.sh
#   REQUESTS=100000 bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS="${REQUESTS:-1000000}"
CONNECTIONS="${CONNECTIONS:-32}"
ADDR="${ADDR:-127.0.0.1:3900}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/reqscope-target}"
cargo build --release -q --example api --example mint_token
cargo build --release -q -p reqscope-bench-servers

out="$(mktemp -d)"
export JWT_SECRET="soak-secret-of-at-least-thirty-two-bytes"
# Budgets far beyond the run: this measures the stack, not the limiter saying no. Every
# access line is written (no route skipped), so that each request's lines can be counted.
RATE_LIMIT_PER_MINUTE=1000000000 ACCESS_LOG_SKIP= ACCESS_LOG_SAMPLE=1 ADDR="$ADDR" RUST_LOG=info \
    "$CARGO_TARGET_DIR/release/examples/api" >"$out/stdout.jsonl" 2>"$out/stderr" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q '"message":"listening"' "$out/stdout.jsonl" 2>/dev/null && break
    sleep 0.1
done
token="$("$CARGO_TARGET_DIR/release/examples/mint_token" 1)"

# One request of each kind at rest: how many lines each kind writes.
cal() { curl -s -o /dev/null -H "x-request-id: cal-$1" "${@:3}" "http://$ADDR$2"; }
cal health /health
cal user /users/2
cal me /users/me -H "authorization: Bearer $token"
cal bad-token /users/me -H "authorization: Bearer not.a.token"
cal fanout /fanout
cal stream /stream
cal not-found /nope
cal bad-user-id /users/abc
cal chain '/chain?hops=1'

"$CARGO_TARGET_DIR/release/bench-server" soak "$ADDR" "$REQUESTS" "$CONNECTIONS" "$server" "$token" | tee "$out/client.txt"

kill -TERM "$server"
status=0
wait "$server" || status=$?
trap - EXIT
echo "server exit status: $status" >>"$out/client.txt"
python3 bench/soak.py "$out/stdout.jsonl" "$out/client.txt" | tee bench/results/soak.md
echo "raw output in $out"
