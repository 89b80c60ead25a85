#!/usr/bin/env bash
# Where the time of one proxied request goes: perf samples of `rulegate serve` while wrk drives
# one route, folded into a flamegraph (inferno) and a top-symbols table.
#   scripts/profile.sh [route=guarded|proxy] [seconds=10]
# Writes target/profile/<route>.svg and prints the 25 hottest functions (self time).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTE=${1:-guarded}
SECONDS_=${2:-10}
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)"; exit 1; }
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v inferno-flamegraph >/dev/null || cargo install inferno --version 0.12.8 >/dev/null
# The release build as shipped (line tables; stacks unwound from DWARF call frame info).
cargo build --release --locked --bin rulegate --example mock_upstream >/dev/null
bin=target/release
out=target/profile; mkdir -p "$out"
MOCK=127.0.0.1:18600
PROXY=127.0.0.1:18601
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
"$bin/examples/mock_upstream" "$MOCK" >"$out/mock.log" 2>&1 & pids+=($!)
"$bin/rulegate" serve --listen "$PROXY" --upstream "http://$MOCK" --policy policies/refusal-style.yaml \
  --model models/rulegate-minilm-rbr --admin-listen off --log warn >"$out/rulegate.log" 2>&1 & pids+=($!)
rg=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://$PROXY/v1/models" && break; sleep 0.2; done
case "$ROUTE" in
  guarded) url="http://$PROXY/v1/chat/completions" ;;
  proxy) url="http://$PROXY/v1/embeddings" ;;
  *) echo "route: guarded or proxy"; exit 2 ;;
esac
# Warm the verdict cache, then sample only while the load runs.
wrk -t1 -c4 -d2s -s benches/chat.lua "$url" >/dev/null
wrk -t2 -c16 -d"$((SECONDS_ + 2))s" -s benches/chat.lua "$url" >"$out/$ROUTE.wrk" &
wrk_pid=$!
sleep 1
perf record -F 499 --call-graph dwarf,16384 -p "$rg" -o "$out/$ROUTE.perf" -- sleep "$SECONDS_" 2>/dev/null
wait "$wrk_pid"
perf script -i "$out/$ROUTE.perf" 2>/dev/null | inferno-collapse-perf >"$out/$ROUTE.folded"
inferno-flamegraph --title "rulegate serve, $ROUTE route, $(date -u +%Y-%m-%d)" <"$out/$ROUTE.folded" >"$out/$ROUTE.svg"
grep "Requests/sec" "$out/$ROUTE.wrk"
perf report -i "$out/$ROUTE.perf" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25
echo "flamegraph: $out/$ROUTE.svg"
