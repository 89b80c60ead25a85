#!/usr/bin/env bash
# Load test: requests/s and latency of rulegate in front of a fast mock upstream, with wrk.
#   direct    - the mock upstream alone (the floor)
#   nginx     - nginx as a plain reverse proxy in front of the mock (the bar for a proxy)
#   proxy     - through rulegate on an unguarded route (pure pingora proxying)
#   guarded   - through rulegate on /v1/chat/completions (input check + output judgement);
#               wrk repeats one request, so after the first one every verdict is a cache hit
#   uncached  - the same through a second rulegate with the verdict cache off: two model runs
#               (input check, then the completion) per request
# Usage: scripts/load.sh [duration_seconds=20] [connections=16]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
CONNECTIONS=${2:-16}
need() { command -v "$1" >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; $SUDO apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx-light
cargo build --release --locked --bin rulegate --example mock_upstream >/dev/null

MOCK=127.0.0.1:18500
PROXY=127.0.0.1:18501
logs=target/load; mkdir -p "$logs"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
./target/release/examples/mock_upstream "$MOCK" >"$logs/mock.log" 2>&1 & pids+=($!)
./target/release/rulegate serve --listen "$PROXY" --upstream "http://$MOCK" --policy policies/refusal-style.yaml \
  --model models/rulegate-minilm-rbr --log warn >"$logs/rulegate.log" 2>&1 & pids+=($!)
UNCACHED=127.0.0.1:18502
printf 'cache:\n  capacity: 0\n' >"$logs/nocache.yaml"
./target/release/rulegate serve --config "$logs/nocache.yaml" --listen "$UNCACHED" --upstream "http://$MOCK" \
  --policy policies/refusal-style.yaml --model models/rulegate-minilm-rbr --admin-listen off --log warn \
  >"$logs/rulegate-uncached.log" 2>&1 & pids+=($!)
# nginx with 2 workers, upstream keep-alive and no access log: a fair plain proxy.
NGINX=127.0.0.1:18503
abs=$(pwd)/$logs
. scripts/bench-lib.sh
write_nginx_conf "$abs" "$MOCK" "$NGINX"
nginx -p "$abs" -c "$abs/nginx.conf" -g 'daemon off;' >"$logs/nginx.log" 2>&1 & pids+=($!)
for addr in "$PROXY" "$UNCACHED" "$NGINX"; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$addr/v1/models" && break; sleep 0.2; done
done


run() { # name url
  local out; out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s benches/chat.lua "$2")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  printf '| %-8s | %10s | %8s | %8s | %s |\n' "$1" "$rps" "$p50" "$p99" "${errors:-none}"
}
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m); date: $(date -u +%Y-%m-%d); wrk -t2 -c$CONNECTIONS -d${DURATION}s"
echo "| route    | requests/s | p50      | p99      | errors |"
echo "|----------|-----------:|---------:|---------:|--------|"
run direct "http://$MOCK/v1/chat/completions"
run nginx "http://$NGINX/v1/chat/completions"
run proxy "http://$PROXY/v1/embeddings"
run guarded "http://$PROXY/v1/chat/completions"
run uncached "http://$UNCACHED/v1/chat/completions"
# Resident memory of each rulegate process after the runs (model loaded, caches warm).
for pid in "${pids[@]:1:2}"; do
  echo "rulegate pid $pid: $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/"$pid"/status) RSS after the runs"
done
