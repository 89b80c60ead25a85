#!/usr/bin/env bash
# Two rulegate builds side by side, interleaved, against nginx as a plain proxy: rounds of wrk on
# nginx, the unguarded route of each build, then the guarded route (verdict-cache hits) of each.
# Interleaving keeps a noisy host from favouring one build.
#   scripts/ab.sh OLD_BINARY NEW_BINARY [rounds=4] [seconds=6]
# Build an old revision with: git worktree add /tmp/old REV && (cd /tmp/old &&
#   CARGO_TARGET_DIR=/tmp/oldtarget cargo build --release --bin rulegate)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-4} D=${4:-6}
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y -qq nginx-light >/dev/null
cargo build --release --locked --example mock_upstream >/dev/null
logs=$(pwd)/target/ab; mkdir -p "$logs"
MOCK=127.0.0.1:18700 A=127.0.0.1:18701 B=127.0.0.1:18702 N=127.0.0.1:18703
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
./target/release/examples/mock_upstream $MOCK >"$logs/mock.log" 2>&1 & pids+=($!)
for pair in "$OLD $A old" "$NEW $B new"; do
  set -- $pair
  "$1" serve --listen "$2" --upstream "http://$MOCK" --policy policies/refusal-style.yaml \
    --model models/rulegate-minilm-rbr --admin-listen off --log warn >"$logs/$3.log" 2>&1 & pids+=($!)
done
. scripts/bench-lib.sh
write_nginx_conf "$logs" "$MOCK" "$N"
nginx -p "$logs" -c "$logs/nginx.conf" -g 'daemon off;' >"$logs/nginx.log" 2>&1 & pids+=($!)
for addr in $A $B $N; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$addr/v1/models" && break; sleep 0.2; done
done
rps() { wrk -t2 -c16 -d"${D}s" -s benches/chat.lua "$1" | awk '/Requests\/sec/ {print $2}'; }
echo "machine: $(nproc) cores; date: $(date -u '+%Y-%m-%d %H:%M') UTC; wrk -t2 -c16 -d${D}s per cell"
echo "| round | nginx | unguarded old | unguarded new | guarded old | guarded new |"
echo "|---|---:|---:|---:|---:|---:|"
for i in $(seq 1 "$ROUNDS"); do
  echo "| $i | $(rps http://$N/v1/chat/completions) | $(rps http://$A/v1/embeddings) | $(rps http://$B/v1/embeddings) | $(rps http://$A/v1/chat/completions) | $(rps http://$B/v1/chat/completions) |"
done
for i in 1 2; do echo "rulegate ${i}: $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/"${pids[$i]}"/status) RSS"; done
