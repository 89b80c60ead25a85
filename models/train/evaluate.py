"""Metrics for rulegate models on a gold split (Python side).

  python evaluate.py --split test --onnx A.onnx [--onnx B.onnx] [--torch out/model.pt] --out metrics.json

The test split is used only here, once, at the end of the recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from data import SPEC, Packer, gold_example, load_gold, load_tokenizer
from rules import RESPONSE_TYPES, Rules


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def average_precision(y, s):
    """AUPRC as average precision (step-wise, like scikit-learn)."""
    y = np.asarray(y, bool)
    if y.sum() == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    y = y[order]
    tp = np.cumsum(y)
    prec = tp / np.arange(1, len(y) + 1)
    return float((prec * y).sum() / y.sum())


def prm_pair_accuracy(groups, values, scores):
    """(fraction of pairs in the same group with different values that `scores` order like
    `values`, ties counting half; number of pairs). The fraction is None without pairs."""
    good = tot = 0.0
    for i in range(len(values)):
        for j in range(len(values)):
            if groups[i] == groups[j] and values[i] > values[j]:
                tot += 1
                good += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return (good / tot if tot else None), int(tot)


def compute_metrics(P, R, Q, examples, rules, majority):
    """P [N,23] proposition logits, R [N,4] response-type logits, Q [N] prm logits."""
    props = rules.simple
    Y = np.array([[float(e.labels[p]) for p in props] for e in examples])
    pred = P > 0
    out = {"n": len(examples), "propositions": {}}
    accs, maj_accs = [], []
    for i, p in enumerate(props):
        y = Y[:, i].astype(bool)
        yhat = pred[:, i]
        tp = int((y & yhat).sum())
        fp = int((~y & yhat).sum())
        fn = int((y & ~yhat).sum())
        acc = float((y == yhat).mean())
        prec = tp / (tp + fp) if tp + fp else None
        rec = tp / (tp + fn) if tp + fn else None
        f1 = (2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else None
        maj = float((y == majority[p]).mean())
        accs.append(acc)
        maj_accs.append(maj)
        out["propositions"][p] = {"accuracy": acc, "precision": prec, "recall": rec, "f1": f1,
                                  "auprc": average_precision(y, P[:, i]), "positives": int(y.sum()),
                                  "predicted_positives": int(yhat.sum()), "majority_accuracy": maj}
    out["mean_accuracy"] = float(np.mean(accs))
    out["majority_mean_accuracy"] = float(np.mean(maj_accs))
    rt_true = np.array([RESPONSE_TYPES.index(e.response_type) for e in examples])
    rt_pred = R.argmax(1)
    out["response_type_accuracy"] = float((rt_true == rt_pred).mean())
    out["comply_vs_refusal_accuracy"] = float(((rt_true == 0) == (rt_pred == 0)).mean())
    conf = np.zeros((4, 4), int)
    for a, b in zip(rt_true, rt_pred):
        conf[a, b] += 1
    out["response_type_confusion"] = {"labels": RESPONSE_TYPES, "rows_true_cols_pred": conf.tolist()}
    # Class accuracy: rules on predicted truth values (threshold 0.5) vs rules on gold labels.
    ok_gold_rt = ok_pred_rt = 0
    cls_conf = {}
    for k, e in enumerate(examples):
        pd = {p: bool(pred[k, i]) for i, p in enumerate(props)}
        gold_cls = rules.classify(e.labels, e.response_type)
        c1 = rules.classify(pd, e.response_type)
        c2 = rules.classify(pd, RESPONSE_TYPES[rt_pred[k]])
        ok_gold_rt += c1 == gold_cls
        ok_pred_rt += c2 == gold_cls
        cls_conf.setdefault(gold_cls, {}).setdefault(c1, 0)
        cls_conf[gold_cls][c1] += 1
    out["class_accuracy"] = ok_gold_rt / len(examples)
    out["class_accuracy_with_predicted_response_type"] = ok_pred_rt / len(examples)
    out["class_confusion_gold_to_pred"] = cls_conf
    # PRM pairs: same response type, different gold class; better class should score higher.
    out["prm_pair_accuracy"], tot = prm_pair_accuracy(rt_true, [e.prm for e in examples], Q)
    out["prm_pairs"] = int(tot)
    return out


def majority_labels(rules):
    rows = load_gold("train")
    return {p: (sum(bool(r["propositions"][p]) for r in rows) * 2 > len(rows)) for p in rules.simple}


# ---------------------------------------------------------------------------
# Back ends
# ---------------------------------------------------------------------------
def pack_all(packer, examples):
    return [packer.pack(e.prompt, e.completion) for e in examples]


def _batches(packed, token_budget=8192):
    order = sorted(range(len(packed)), key=lambda i: len(packed[i][0]))
    s = 0
    while s < len(order):
        e = s + 1
        while e < len(order) and len(packed[order[e]][0]) * (e - s + 1) <= token_budget:
            e += 1
        yield order[s:e]
        s = e


def _arrays(packed, idx, pad):
    t = max(len(packed[i][0]) for i in idx)
    ids = np.full((len(idx), t), pad, np.int64)
    am = np.zeros((len(idx), t), np.int64)
    tt = np.zeros((len(idx), t), np.int64)
    for r, i in enumerate(idx):
        n = len(packed[i][0])
        ids[r, :n] = packed[i][0]
        am[r, :n] = 1
        tt[r, :n] = packed[i][1]
    return ids, am, tt


def ort_session(path, threads=2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def is_dynamically_quantized(path):
    import onnx
    return any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(path, load_external_data=False).graph.node)


def run_onnx(path_or_sess, packed, pad):
    sess = ort_session(path_or_sess) if isinstance(path_or_sess, str) else path_or_sess
    # A dynamically quantised graph's rows depend on their batch; rulegate runs it one row at a
    # time, and so does the evaluation.
    budget = 1 if isinstance(path_or_sess, str) and is_dynamically_quantized(path_or_sess) else 8192
    n = len(packed)
    P, R, Q = np.zeros((n, 23), np.float32), np.zeros((n, 4), np.float32), np.zeros(n, np.float32)
    for idx in _batches(packed, budget):
        ids, am, tt = _arrays(packed, idx, pad)
        p, r, q = sess.run(["proposition_logits", "response_type_logits", "prm_logit"],
                           {"input_ids": ids, "attention_mask": am, "token_type_ids": tt})
        P[idx], R[idx], Q[idx] = p, r, q[:, 0]
    return P, R, Q


def run_torch(model, packed, pad):
    import torch
    model.eval()
    n = len(packed)
    P, R, Q = np.zeros((n, 23), np.float32), np.zeros((n, 4), np.float32), np.zeros(n, np.float32)
    with torch.no_grad():
        for idx in _batches(packed):
            ids, am, tt = (torch.from_numpy(a) for a in _arrays(packed, idx, pad))
            p, r, q = model(ids, am, tt)
            P[idx], R[idx], Q[idx] = p.numpy(), r.numpy(), q[:, 0].numpy()
    return P, R, Q


def load_torch(path):
    import torch
    from model import RuleGateModel
    torch.set_num_threads(2)
    m = RuleGateModel()
    m.load_state_dict(torch.load(path, map_location="cpu"))
    return m.eval()


def latency(path, packer, lengths=(128, 256, 384), runs=40, warmup=5, batch=1):
    """Median wall time of one call on `batch` (prompt, completion) pairs of exactly n tokens, 2 threads."""
    sess = ort_session(path, 2)
    out = {}
    word = packer.tok.token_to_id("the")
    for n in lengths:
        half = (n - 3) // 2
        ids = np.array([[packer.cls] + [word] * half + [packer.sep] + [word] * (n - 3 - half) + [packer.sep]] * batch, np.int64)
        tt = np.array([[0] * (half + 2) + [1] * (n - half - 2)] * batch, np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": tt}
        for _ in range(warmup):
            sess.run(None, feed)
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feed)
            ts.append(time.perf_counter() - t0)
        out[str(n)] = {"median_ms": round(1000 * float(np.median(ts)), 2), "p90_ms": round(1000 * float(np.percentile(ts, 90)), 2)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--onnx", action="append", default=[], help="NAME=PATH")
    ap.add_argument("--torch", action="append", default=[], help="NAME=PATH to a state dict")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rules = Rules(SPEC)
    if args.split == "test":
        rows = load_gold("test")
    else:
        from data import split_train_val
        rows = split_train_val(load_gold("train"))[1]
    examples = [gold_example(r, rules, source="eval") for r in rows]
    packer = Packer(load_tokenizer(args.tokenizer))
    packed = pack_all(packer, examples)
    maj = majority_labels(rules)
    res = {"split": args.split, "truncated_rows": int(sum(t for _, _, t in packed)), "models": {}}
    for spec in args.torch:
        name, path = spec.split("=", 1)
        res["models"][name] = compute_metrics(*run_torch(load_torch(path), packed, packer.pad), examples, rules, maj)
    for spec in args.onnx:
        name, path = spec.split("=", 1)
        m = compute_metrics(*run_onnx(path, packed, packer.pad), examples, rules, maj)
        m["file_mb"] = round(os.path.getsize(path) / 1e6, 2)
        if args.latency:
            m["latency_ort_2threads"] = latency(path, packer)
        res["models"][name] = m
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    for name, m in res["models"].items():
        print(f"{name}: mean_acc {m['mean_accuracy']:.4f} rt {m['response_type_accuracy']:.3f} "
              f"comply/refuse {m['comply_vs_refusal_accuracy']:.3f} class {m['class_accuracy']:.3f} "
              f"prm_pairs {m['prm_pair_accuracy']:.3f}")


if __name__ == "__main__":
    main()
