#!/usr/bin/env bash
# Uncached guarded requests (an input check and a completion pass each) through one rulegate
# with a given classifier layout, with one connection and with 16: how `classifier.sessions`
# and `classifier.threads` trade single-request latency for throughput on this machine.
#   scripts/layout.sh SESSIONS THREADS [seconds=8]
set -euo pipefail
cd "$(dirname "$0")/.."
S=$1 T=$2 D=${3:-8}
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
cargo build --release --locked --bin rulegate --example mock_upstream >/dev/null
logs=target/layout; mkdir -p $logs
MOCK=127.0.0.1:18600 P=127.0.0.1:18601
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
./target/release/examples/mock_upstream $MOCK >$logs/mock.log 2>&1 & pids+=($!)
printf 'cache:\n  capacity: 0\nclassifier:\n  sessions: %s\n  threads: %s\n' "$S" "$T" >$logs/config.yaml
./target/release/rulegate serve --config $logs/config.yaml --listen $P --upstream http://$MOCK \
  --policy policies/refusal-style.yaml --model models/rulegate-minilm-rbr --admin-listen off --log warn \
  >$logs/rulegate.log 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -s -o /dev/null http://$P/v1/models && break; sleep 0.2; done
for c in 1 16; do
  out=$(wrk -t1 -c$c -d"${D}s" --latency -s benches/chat.lua http://$P/v1/chat/completions)
  echo "sessions=$S threads=$T connections=$c: $(awk '/Requests\/sec/ {print $2}' <<<"$out") req/s, p50 $(awk '$1=="50%" {print $2}' <<<"$out")"
done
echo "RSS $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/"${pids[1]}"/status)"
