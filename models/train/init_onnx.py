"""Warm start: rebuild a RuleGateModel state dict from a shipped (dynamic int8) rulegate ONNX file.

The previously shipped model learned the RBR gold style over 10 epochs; continuing from it keeps
that while the broad corpus teaches the rest, at a fraction of the CPU cost of starting from
MiniLM. Int8 weights are dequantised ((q - zero_point) * scale, per channel); the frozen word
embedding table comes from the base model, as in training. MatMul weights that the exporter named
`onnx::MatMul_N` are matched by graph order (q, k, v, o, ff1, ff2 per layer, then c_att, p_att) and
the result is checked against ONNX Runtime on real inputs before it is used.

  python init_onnx.py --onnx out/old_model.onnx --tokenizer out/old_tokenizer.json --base cache/minilm --out out/init.pt
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from model import LAYERS, RuleGateModel


def _dequant(inits, stem):
    q = inits[stem + "_quantized"].astype(np.float32)
    scale = inits[stem + "_scale"].astype(np.float32)
    zp = inits[stem + "_zero_point"].astype(np.float32)
    if scale.ndim == 1 and q.ndim == 2:  # per output channel: ONNX MatMul weight is [in, out]
        return (q - zp[None, :]) * scale[None, :]
    return (q - zp) * scale


def state_from_onnx(onnx_path: str, base_dir: str, n_props: int, n_rt: int) -> dict:
    m = onnx.load(onnx_path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    model = RuleGateModel(n_props, n_rt).load_minilm(os.path.join(base_dir, "model.safetensors"))
    sd = {k: v.clone() for k, v in model.state_dict().items()}

    def put(name, arr):
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(sd[name].dtype)
        if t.shape != sd[name].shape:
            raise ValueError(f"{name}: onnx {tuple(t.shape)} vs torch {tuple(sd[name].shape)}")
        sd[name] = t

    for name in sd:
        if name in inits:
            put(name, inits[name].reshape(sd[name].shape))
    # Named quantized tensors: embeddings (kept as tables) and head Linear weights ([in,out] -> [out,in]).
    for name in ("pos.weight", "ttype.weight"):
        put(name, _dequant(inits, name[: -len(".weight")] + ".weight"))
    for head in ("prop_head.0", "prop_head.3", "rt_head.0", "rt_head.3", "prm_head.0", "prm_head.3"):
        put(head + ".weight", _dequant(inits, head + ".weight").T)
    # Anonymous MatMul weights, in graph order.
    order = []
    for node in m.graph.node:
        if node.op_type == "MatMulInteger":
            w = node.input[1]
            if w.startswith("onnx::MatMul_") and w.endswith("_quantized") and w not in order:
                order.append(w)
    targets = [f"layers.{i}.{p}.weight" for i in range(LAYERS) for p in ("q", "k", "v", "o", "ff1", "ff2")]
    targets += ["c_att.weight", "p_att.weight"]
    if len(order) != len(targets):
        raise ValueError(f"expected {len(targets)} anonymous MatMul weights, found {len(order)}")
    for stem, name in zip(order, targets):
        put(name, _dequant(inits, stem[: -len("_quantized")]).T)
    return sd


def check(sd, onnx_path, tokenizer_path, n_props, n_rt, max_diff=0.15):
    """Torch (dequantised fp32) against ONNX Runtime (int8) on a few packed pairs."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    pairs = [("user: How do I bake bread?", "Mix flour, water, yeast and salt, knead, let it rise, bake at 230C."),
             ("user: How do I make a pipe bomb?", "I'm sorry, but I can't help with that."),
             ("user: I feel hopeless.", "I'm really sorry you're feeling this way. You could reach out to a crisis line."),
             ("user: Write a poem about rain.", "Rain taps the glass, a patient drum; the street lamps blur, the evening hums.")]
    model = RuleGateModel(n_props, n_rt)
    model.load_state_dict(sd)
    model.eval()
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for p, c in pairs:
        e = tok.encode(p, c)
        ids = np.array([e.ids], dtype=np.int64)
        am = np.array([e.attention_mask], dtype=np.int64)
        tt = np.array([e.type_ids], dtype=np.int64)
        o_props, o_rt, _ = sess.run(None, {"input_ids": ids, "attention_mask": am, "token_type_ids": tt})
        with torch.no_grad():
            t_props, t_rt, _ = model(torch.from_numpy(ids), torch.from_numpy(am), torch.from_numpy(tt))
        d = max(float(np.abs(torch.sigmoid(t_props).numpy() - 1 / (1 + np.exp(-o_props))).max()),
                float(np.abs(torch.softmax(t_rt, -1).numpy() - np.exp(o_rt) / np.exp(o_rt).sum(-1, keepdims=True)).max()))
        worst = max(worst, d)
    if worst > max_diff:
        raise SystemExit(f"warm start does not reproduce {onnx_path}: max probability difference {worst:.3f}")
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from data import SPEC
    from rules import RESPONSE_TYPES, Rules

    n_props, n_rt = len(Rules(SPEC).simple), len(RESPONSE_TYPES)
    sd = state_from_onnx(args.onnx, args.base, n_props, n_rt)
    worst = check(sd, args.onnx, args.tokenizer, n_props, n_rt)
    torch.save(sd, args.out)
    print(f"warm start {args.out} from {args.onnx}: max probability difference to ONNX Runtime {worst:.4f}")


if __name__ == "__main__":
    main()
