"""The GPU variant of a shipped model directory: its int8 weights dequantised into an fp16
graph (fp32 inputs and outputs kept), so that rows are independent of their batch and
rulegate runs real batches (it runs a `dynamic` graph one row at a time).

  .venv/bin/python models/train/gpu_variant.py --model models/rulegate-minilm-rbr --out target/model-fp16

Writes model.onnx, tokenizer.json and manifest.json (precision fp16, quantization
weight_only) to --out. Use it with `--device cuda --model target/model-fp16`; it also runs on
a CPU (slower than the int8 graph there: benches/README.md), which is how its parity with the
int8 model is tested. Deterministic: the same input gives the same bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batch_cost import dequantize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a model directory with a dynamic int8 model.onnx")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with open(os.path.join(args.model, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("quantization") != "dynamic":
        sys.exit(f"{args.model}: expected a dynamically quantised model, found {manifest.get('quantization')}")
    os.makedirs(args.out, exist_ok=True)
    fp32 = os.path.join(args.out, "model.fp32.onnx")
    dequantize(os.path.join(args.model, "model.onnx"), fp32)
    # Inputs are int64 ids and outputs fp32 logits either way; fp16 inside only.
    fp16 = convert_float_to_float16(onnx.load(fp32), keep_io_types=True)
    onnx.save(fp16, os.path.join(args.out, "model.onnx"))
    os.remove(fp32)
    shutil.copy(os.path.join(args.model, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))
    manifest["precision"] = "fp16"
    manifest["quantization"] = "weight_only"
    manifest["version"] = f"{manifest['version']}-fp16"
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}: model.onnx {os.path.getsize(os.path.join(args.out, 'model.onnx')) / 1e6:.1f} MB (fp16)")


if __name__ == "__main__":
    main()
