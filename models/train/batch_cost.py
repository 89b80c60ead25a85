"""What real batches would buy on this CPU (issue 13): the shipped dynamic int8 graph, its
weights dequantised back into an fp32 graph (rows independent of their batch), and a static
int8 of that fp32 graph, timed at batch 1 and per row at batches 8 and 16.

  python batch_cost.py --model ../rulegate-minilm-rbr/model.onnx --work /tmp/batch-cost

Needs onnx, onnxruntime==1.31.1 and numpy. The static graph is calibrated on random tokens:
good for timing only, not for verdicts. Results: benches/README.md.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def dequantize(src: str, dst: str) -> None:
    """Every MatMulInteger (with its DynamicQuantizeLinear, Cast and scale Mul) becomes an fp32
    MatMul on the dequantised weight; int8 embedding tables become fp32 tables."""
    m = onnx.load(src)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    arr = lambda n: numpy_helper.to_array(inits[n]).astype(np.float32)  # noqa: E731
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    new_inits, drop, replace = [], set(), {}
    for n in g.node:
        if n.op_type != "MatMulInteger":
            continue
        xq, wq, _, wzp = n.input
        stem = wq[: -len("_quantized")]
        w = (arr(wq) - arr(wzp)) * arr(stem + "_scale")
        x = producer[xq].input[0]
        (cast,) = consumers[n.output[0]]
        (mul,) = consumers[cast.output[0]]
        new_inits.append(numpy_helper.from_array(w, stem + "_fp32"))
        replace[id(n)] = helper.make_node("MatMul", [x, stem + "_fp32"], [mul.output[0]], name=n.name + "_fp32")
        drop.update([id(cast), id(mul)])
    nodes = []
    for n in g.node:
        if id(n) in drop:
            continue
        n = replace.get(id(n), n)
        gather = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" and n.input else None
        if gather is not None and gather.op_type == "Gather" and gather.input[0] in inits:
            table = gather.input[0]
            t = (arr(table) - arr(n.input[2])) * arr(n.input[1])
            new_inits.append(numpy_helper.from_array(t.astype(np.float32), table + "_fp32"))
            gather.input[0] = table + "_fp32"
            gather.output[0] = n.output[0]
            continue
        nodes.append(n)
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(n.input)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    kept = [i for i in list(g.initializer) + new_inits if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(m)
    onnx.save(m, dst)


def feed(rng, batch: int, n: int) -> dict:
    ids = rng.integers(1000, 20000, size=(batch, n)).astype(np.int64)
    ids[:, 0] = 101
    tt = np.zeros_like(ids)
    tt[:, n // 2:] = 1
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": tt}


def static_int8(fp32: str, dst: str, rng) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.it = iter([feed(rng, 1, n) for n in (16, 40, 90)])

        def get_next(self):
            return next(self.it, None)

    pre = dst + ".pre.onnx"
    quant_pre_process(fp32, pre, skip_symbolic_shape=True)
    m = onnx.load(pre)
    weights = {i.name for i in m.graph.initializer}
    nodes = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    quantize_static(pre, dst, Rows(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def median_ms(session, f, runs: int) -> float:
    for _ in range(2):
        session.run(None, f)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, f)
        ts.append(time.perf_counter() - t0)
    return 1000 * float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--tokens", default="12,40")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    rng = np.random.default_rng(0)
    fp32 = os.path.join(args.work, "model.fp32.onnx")
    static = os.path.join(args.work, "model.int8.static.onnx")
    dequantize(args.model, fp32)
    static_int8(fp32, static, rng)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    print(f"| graph | tokens | batch 1 | per row at batch 8 | per row at batch 16 |  ({args.threads} thread(s))")
    print("|---|---:|---:|---:|---:|")
    for name, path in [("dynamic int8", args.model), ("static int8", static), ("fp32 (dequantised)", fp32)]:
        s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for n in (int(t) for t in args.tokens.split(",")):
            b1 = median_ms(s, feed(rng, 1, n), 15)
            b8 = median_ms(s, feed(rng, 8, n), 6) / 8
            b16 = median_ms(s, feed(rng, 16, n), 4) / 16
            print(f"| {name} | {n} | {b1:.2f} ms | {b8:.2f} ms | {b16:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
