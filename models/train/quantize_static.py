"""Static int8 candidates of the exported fp32 graph: activation scales calibrated once, on
training rows, so a row's result no longer depends on the rest of its batch (rulegate can then
run real batches) and the response type stays a function of the prompt alone.

  python quantize_static.py --fp32 out/export/model.fp32.onnx --tokenizer out/export/tokenizer.json \
      --work out/export [--calibration 512]

Writes model.int8.static_*.onnx and static_info.json (closeness to fp32 on gold validation,
batch dependence, response-type invariance, latency at batch 1 and per row at batch 16).
Calibration uses gold train rows only; validation is the gold train split's held-out part.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from data import SPEC, Packer, gold_example, load_gold, load_tokenizer, split_train_val
from evaluate import latency, ort_session, run_onnx, sigmoid
from export import MAX_LENGTH, MIN_PROMPT_TOKENS, batch_dependence, rt_invariance
from rules import Rules


class Rows(CalibrationDataReader):
    def __init__(self, packed, pad):
        self.feeds = []
        for ids, tt, _ in packed:
            ids = np.array([ids], np.int64)
            self.feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids),
                               "token_type_ids": np.array([tt], np.int64)})
        self.it = iter(self.feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.feeds)


def weight_matmuls(path):
    """MatMul nodes whose second input is a weight (not attention's activation x activation)."""
    import onnx
    m = onnx.load(path)
    inits = {i.name for i in m.graph.initializer}
    return [n.name for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def per_row_at_batch(path, packer, n=256, batch=16):
    return round(latency(path, packer, lengths=(n,), runs=15, warmup=3, batch=batch)[str(n)]["median_ms"] / batch, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    args = ap.parse_args()
    rules = Rules(SPEC)
    packer = Packer(load_tokenizer(args.tokenizer), MAX_LENGTH, MIN_PROMPT_TOKENS)
    train, val = split_train_val(load_gold("train"))
    random.Random(7).shuffle(train)
    calib = [gold_example(r, rules) for r in train[: args.calibration]]
    cp = [packer.pack(e.prompt, e.completion) for e in calib]
    val = [gold_example(r, rules) for r in val]
    vp = [packer.pack(e.prompt, e.completion) for e in val]
    ref = sigmoid(run_onnx(args.fp32, vp, packer.pad)[0])

    pre = os.path.join(args.work, "model.fp32.pre.onnx")
    quant_pre_process(args.fp32, pre, skip_symbolic_shape=True)
    weights = weight_matmuls(pre)
    variants = {
        "static_minmax": dict(calibrate_method=CalibrationMethod.MinMax, nodes=weights),
        "static_percentile": dict(calibrate_method=CalibrationMethod.Percentile, nodes=weights,
                                  extra={"CalibPercentile": 99.99}),
        "static_entropy": dict(calibrate_method=CalibrationMethod.Entropy, nodes=weights),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    report = {}
    for name, v in variants.items():
        dst = os.path.join(args.work, f"model.int8.{name}.onnx")
        t0 = time.time()
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True, **v.get("extra", {})}
        quantize_static(pre, dst, Rows(cp, packer.pad), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul"], nodes_to_quantize=v["nodes"],
                        calibrate_method=v["calibrate_method"], extra_options=extra)
        report[name] = {"mb": round(os.path.getsize(dst) / 1e6, 2), "quantize_s": round(time.time() - t0, 1),
                        "val_mean_abs_prob_dev": float(np.abs(sigmoid(run_onnx(dst, vp, packer.pad)[0]) - ref).mean()),
                        "val_max_abs_prob_dev": float(np.abs(sigmoid(run_onnx(dst, vp, packer.pad)[0]) - ref).max()),
                        "rt_invariance": rt_invariance(dst, packer),
                        "batch_dependence": batch_dependence(dst, vp[:16], packer.pad),
                        "latency_batch1": latency(dst, packer, lengths=(256,)),
                        "ms_per_row_batch16_256": per_row_at_batch(dst, packer)}
        print(name, json.dumps(report[name]), flush=True)
    for name in ["model.int8.dynamic_pc.onnx"]:
        path = os.path.join(args.work, name)
        if os.path.exists(path):
            report[name] = {"latency_batch1": latency(path, packer, lengths=(256,)),
                            "ms_per_row_batch16_256": per_row_at_batch(path, packer),
                            "val_mean_abs_prob_dev": float(np.abs(sigmoid(run_onnx(path, vp, packer.pad)[0]) - ref).mean())}
            print(name, json.dumps(report[name]), flush=True)
    with open(os.path.join(args.work, "static_info.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
