#!/usr/bin/env bash
# Creates .venv-mlserver: Seldon MLServer 1.7.1 + ONNX Runtime 1.31.1, the server side of
# rulegate's remote classifier backend (Open Inference Protocol / KServe v2, HTTP and gRPC).
# The runtime and its settings are in deploy/mlserver/ (see deploy/mlserver/README.md).
#
# Idempotent: the install is skipped while .venv-mlserver holds a stamp matching the pinned
# requirements (deploy/mlserver/requirements.txt + constraints.txt); change either and the
# next run reinstalls. Needs Python 3.11 or 3.12 (mlserver 1.7.1: <3.13; onnxruntime 1.31.1:
# >=3.11) with the venv module; set PYTHON=/path/to/python3.x to choose one.
# Usage: scripts/setup-mlserver.sh        (then: scripts/mlserver_smoke.py to check it)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${RULEGATE_MLSERVER_VENV:-.venv-mlserver}
REQ=deploy/mlserver/requirements.txt
CONSTRAINTS=deploy/mlserver/constraints.txt
say() { printf '[setup-mlserver] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if [ ! -f "$REQ" ] || [ ! -f "$CONSTRAINTS" ]; then die "$REQ or $CONSTRAINTS is missing (run from a rulegate checkout)"; fi

# A Python that both packages support: $PYTHON if set, else the first of python3, 3.12, 3.11.
python_ok() { "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' 2>/dev/null; }
if [ -n "${PYTHON:-}" ]; then
  python_ok "$PYTHON" || die "PYTHON=$PYTHON is not Python 3.11 or 3.12 (mlserver 1.7.1 needs <3.13, onnxruntime 1.31.1 needs >=3.11)"
else
  for candidate in python3 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null && python_ok "$candidate"; then PYTHON=$candidate; break; fi
  done
  [ -n "${PYTHON:-}" ] || die "no Python 3.11 or 3.12 found (python3 is $(python3 --version 2>&1 || echo missing)); install one (e.g. apt-get install python3.11-venv) or set PYTHON=/path/to/python3.11"
fi

stamp="$VENV/.rulegate-mlserver-$(cat "$REQ" "$CONSTRAINTS" | sha256sum | cut -c1-12)"
if [ -f "$stamp" ] && [ -x "$VENV/bin/mlserver" ]; then
  say "up to date: $VENV ($("$VENV/bin/python" -c 'import mlserver, onnxruntime; print("mlserver", mlserver.__version__, "onnxruntime", onnxruntime.__version__)'))"
  exit 0
fi

started=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv $VENV' failed; on Debian install the venv module: apt-get install python3-venv"
fi
# Keep the environment out of git whatever the checkout's .gitignore says.
printf '*\n' >"$VENV/.gitignore"

say "installing $(grep -E '^[a-zA-Z]' "$REQ" | tr '\n' ' ')(about 1-2 minutes, ~400 MB)"
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" -c "$CONSTRAINTS"; then
  die "pip install into $VENV failed (requirements: $REQ, constraints: $CONSTRAINTS). Check that PyPI is reachable and that $PYTHON is 3.11 or 3.12; to start over: rm -rf $VENV && $0"
fi
# A broken install fails here rather than when the server starts.
if ! "$VENV/bin/python" -c 'import mlserver, mlserver.grpc.dataplane_pb2, onnxruntime, numpy' 2>/dev/null; then
  die "the packages installed but do not import; remove $VENV and rerun: rm -rf $VENV && $0"
fi
rm -f "$VENV"/.rulegate-mlserver-*
touch "$stamp"
say "ready in $(($(date +%s) - started)) s: $VENV ($(du -sh "$VENV" | cut -f1)); $("$VENV/bin/python" -c 'import mlserver, onnxruntime, numpy; print("mlserver", mlserver.__version__, "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)')"
say "start the server: $VENV/bin/mlserver start deploy/mlserver    check it: $VENV/bin/python scripts/mlserver_smoke.py"
