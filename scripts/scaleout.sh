#!/usr/bin/env bash
# Scale-out measurement: several rulegate processes, each judging with its own in-process
# model, against the same processes sharing one inference server (MLServer running the shipped
# model.onnx, deploy/mlserver) over the Open Inference Protocol. Every request is judged
# (verdict cache off): an input check and the completion's judgement, in front of a fast mock
# upstream. wrk drives every rulegate process at once; the table sums their requests/s.
# Usage: scripts/scaleout.sh [processes=2] [duration_seconds=15] [connections_per_process=8]
set -euo pipefail
cd "$(dirname "$0")/.."
PROCS=${1:-2}
DURATION=${2:-15}
CONNS=${3:-8}
need() { command -v "$1" >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; $SUDO apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
scripts/setup-mlserver.sh >/dev/null
cargo build --release --locked --bin rulegate --example mock_upstream >/dev/null

logs=target/scaleout; rm -rf "$logs"; mkdir -p "$logs"
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop_all EXIT
wait_for() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done; echo "$1 did not come up" >&2; exit 1; }

MOCK=127.0.0.1:18600
MODEL=models/rulegate-minilm-rbr

start_mock() { ./target/release/examples/mock_upstream "$MOCK" >"$logs/mock.log" 2>&1 & pids+=($!); }

start_mlserver() { # http_port grpc_port
  local dir=$logs/mlserver; mkdir -p "$dir/rulegate-minilm-rbr"
  .venv/bin/python - "$dir" "$1" "$2" "$(pwd)/$MODEL" <<'PY'
import json, sys, pathlib
out, http, grpc, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = json.loads(pathlib.Path("deploy/mlserver/settings.json").read_text())
s.update(http_port=http, grpc_port=grpc, metrics_port=grpc + 1, host="127.0.0.1")
pathlib.Path(out, "settings.json").write_text(json.dumps(s))
m = json.loads(pathlib.Path("deploy/mlserver/rulegate-minilm-rbr/model-settings.json").read_text())
m["parameters"]["uri"] = model
pathlib.Path(out, "rulegate-minilm-rbr", "model-settings.json").write_text(json.dumps(m))
PY
  PYTHONPATH=deploy/mlserver .venv-mlserver/bin/mlserver start "$dir" >"$logs/mlserver.log" 2>&1 & pids+=($!)
  wait_for "http://127.0.0.1:$1/v2/models/rulegate-minilm-rbr/ready"
}

rg_pids=()
start_rulegates() { # config_file
  rg_pids=()
  for i in $(seq 1 "$PROCS"); do
    local port=$((18610 + i))
    ./target/release/rulegate serve --config "$1" --listen "127.0.0.1:$port" --upstream "http://$MOCK" \
      --policy policies/refusal-style.yaml --model "$MODEL" --admin-listen off --log warn \
      >"$logs/rulegate-$i.log" 2>&1 & pids+=($!); rg_pids+=($!)
  done
  for i in $(seq 1 "$PROCS"); do wait_for "http://127.0.0.1:$((18610 + i))/v1/models"; done
}

measure() { # name
  local outs=()
  for i in $(seq 1 "$PROCS"); do
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s benches/chat.lua \
      "http://127.0.0.1:$((18610 + i))/v1/chat/completions" >"$logs/wrk-$1-$i.txt" 2>&1 &
    outs+=($!)
  done
  wait "${outs[@]}"
  local rss=0
  for p in "${rg_pids[@]}"; do rss=$((rss + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done
  python3 - "$1" "$logs" "$PROCS" "$rss" <<'PY'
import re, sys
name, logs, procs, rss_kib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps, p50, p99, errors = 0.0, [], [], 0
for i in range(1, procs + 1):
    text = open(f"{logs}/wrk-{name}-{i}.txt").read()
    rps += float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50.append(ms(re.search(r"50%\s+(\S+)", text).group(1)))
    p99.append(ms(re.search(r"99%\s+(\S+)", text).group(1)))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors += sum(map(int, m.groups())) if m else 0
print(f"| {name} | {procs} | {rps:.1f} | {max(p50):.1f} | {max(p99):.1f} | {errors} | {rss_kib / 1024 / procs:.0f} |")
PY
}

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "$PROCS rulegate processes, wrk -t1 -c$CONNS -d${DURATION}s against each at once; verdict cache off"
echo
echo "| setup | processes | requests/s (sum) | p50 ms (worst) | p99 ms (worst) | errors | RSS per rulegate, MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
start_mock

# Each process with its own model: one ONNX session, one intra-op thread (the cores are shared).
printf 'cache:\n  capacity: 0\nclassifier:\n  sessions: 1\n  threads: 1\n' >"$logs/local.yaml"
start_rulegates "$logs/local.yaml"
measure "own model each"
stop_all; start_mock

start_mlserver 18620 18621
for protocol in http grpc; do
  port=18620; [ "$protocol" = grpc ] && port=18621
  printf 'cache:\n  capacity: 0\nclassifier:\n  backend: remote\n  sessions: 4\n  remote:\n    url: http://127.0.0.1:%s\n    protocol: %s\n    poll_secs: 0\n' \
    "$port" "$protocol" >"$logs/remote-$protocol.yaml"
  start_rulegates "$logs/remote-$protocol.yaml"
  measure "shared MLServer ($protocol)"
  for p in "${rg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
done
echo
echo "raw wrk output: $logs/wrk-*.txt; logs: $logs/*.log"
