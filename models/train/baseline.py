"""Frozen-encoder baseline: the pretrained MiniLM (same pooled features and mask as the
deliverable) with linear heads only, trained on the same kinds of data.

  python baseline.py --base DIR --out out/baseline   (writes val metrics; --test adds test)

Weight decay is chosen on the validation split.
"""
from __future__ import annotations

import argparse
import json
import os
import random

import numpy as np
import torch
import torch.nn.functional as F

from data import SPEC, Packer, convention_masks, gold_example, load_gold, load_jbb, load_tokenizer, rt_index, split_train_val
from evaluate import compute_metrics, majority_labels
from model import RuleGateModel
from rules import Rules
from synth import Generator
from train import synth_examples

torch.set_num_threads(2)


@torch.no_grad()
def features(model, packer, examples, max_length, budget=8192):
    packed = [packer.pack(e.prompt, e.completion, max_length) for e in examples]
    order = sorted(range(len(packed)), key=lambda i: len(packed[i][0]))
    pair = np.zeros((len(packed), 4 * 384), np.float32)
    prm = np.zeros((len(packed), 3 * 384), np.float32)
    s = 0
    while s < len(order):
        e = s + 1
        while e < len(order) and len(packed[order[e]][0]) * (e - s + 1) <= budget:
            e += 1
        idx = order[s:e]
        t = max(len(packed[i][0]) for i in idx)
        ids = torch.zeros((len(idx), t), dtype=torch.long)
        am = torch.zeros_like(ids)
        tt = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            n = len(packed[i][0])
            ids[r, :n] = torch.tensor(packed[i][0])
            am[r, :n] = 1
            tt[r, :n] = torch.tensor(packed[i][1])
        a, b = model.features(ids, am, tt)
        pair[idx], prm[idx] = a.numpy(), b.numpy()
        s = e
    return pair, prm


def targets(examples, props):
    y = np.array([[0.0 if e.labels.get(p) is None else float(e.labels[p]) for p in props] for e in examples], np.float32)
    m = np.array([[0.0 if e.labels.get(p) is None else 1.0 for p in props] for e in examples], np.float32)
    rt = np.array([rt_index(e.response_type) for e in examples])
    q = np.array([-1.0 if e.prm is None else e.prm for e in examples], np.float32)
    return y, m, rt, q


def fit_linear(Xp, Xr, y, m, rt, q, pos_weight, wd, epochs=300, seed=0):
    torch.manual_seed(seed)
    Xp, Xr = torch.tensor(Xp), torch.tensor(Xr)
    mu, sd = Xp.mean(0), Xp.std(0) + 1e-6
    mur, sdr = Xr.mean(0), Xr.std(0) + 1e-6
    lp = torch.nn.Linear(Xp.shape[1], y.shape[1])
    lr_ = torch.nn.Linear(Xr.shape[1], 4)
    lq = torch.nn.Linear(Xp.shape[1], 1)
    opt = torch.optim.Adam(list(lp.parameters()) + list(lr_.parameters()) + list(lq.parameters()), lr=3e-3, weight_decay=wd)
    y, m, rt, q = torch.tensor(y), torch.tensor(m), torch.tensor(rt), torch.tensor(q)
    Zp, Zr = (Xp - mu) / sd, (Xr - mur) / sdr
    k, pk = rt >= 0, q >= 0
    for _ in range(epochs):
        opt.zero_grad()
        l1 = (F.binary_cross_entropy_with_logits(lp(Zp), y, pos_weight=pos_weight, reduction="none") * m).sum() / m.sum()
        l2 = F.cross_entropy(lr_(Zr[k]), rt[k])
        l3 = F.binary_cross_entropy_with_logits(lq(Zp[pk])[:, 0], q[pk])
        (l1 + 0.5 * l2 + 0.5 * l3).backward()
        opt.step()

    def predict(Xp_, Xr_):
        with torch.no_grad():
            zp, zr = (torch.tensor(Xp_) - mu) / sd, (torch.tensor(Xr_) - mur) / sdr
            return lp(zp).numpy(), lr_(zr).numpy(), lq(zp)[:, 0].numpy()
    return predict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--n-synth", type=int, default=2000)
    ap.add_argument("--n-jbb", type=int, default=600)
    ap.add_argument("--test", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    random.seed(args.seed)
    rules = Rules(SPEC)
    props = rules.simple
    packer = Packer(load_tokenizer(os.path.join(args.base, "tokenizer.json")))
    model = RuleGateModel().load_minilm(os.path.join(args.base, "model.safetensors")).eval()
    train_rows, val_rows = split_train_val(load_gold("train"))
    gold_tr = [gold_example(r, rules) for r in train_rows]
    gold_va = [gold_example(r, rules) for r in val_rows]
    jbb = load_jbb(rules)
    gen = Generator(rules, train_rows, jbb, seed=args.seed)
    synth = synth_examples([gen.sample() for _ in range(args.n_synth)], convention_masks(train_rows, rules), 1.0)
    aux = random.Random(args.seed).sample(jbb, args.n_jbb) + synth
    Xg, Rg = features(model, packer, gold_tr, 384)
    Xa, Ra = features(model, packer, aux, 192)
    Xv, Rv = features(model, packer, gold_va, 384)
    tr = gold_tr + aux
    Xp, Xr = np.concatenate([Xg, Xa]), np.concatenate([Rg, Ra])
    y, m, rt, q = targets(tr, props)
    pos, neg = (y * m).sum(0), ((1 - y) * m).sum(0)
    pos_weight = torch.tensor(np.clip(np.sqrt(neg / np.maximum(pos, 1)), 1.0, 10.0), dtype=torch.float32)
    maj = majority_labels(rules)
    res = {"val": {}}
    best = None
    for wd in (0.0, 1e-4, 1e-3, 1e-2):
        pred = fit_linear(Xp, Xr, y, m, rt, q, pos_weight, wd, seed=args.seed)
        mv = compute_metrics(*pred(Xv, Rv), gold_va, rules, maj)
        res["val"][str(wd)] = {"mean_accuracy": mv["mean_accuracy"], "response_type_accuracy": mv["response_type_accuracy"]}
        if best is None or mv["mean_accuracy"] > best[0]:
            best = (mv["mean_accuracy"], wd, pred, mv)
    res["chosen_weight_decay"] = best[1]
    res["val_metrics"] = best[3]
    if args.test:
        test = [gold_example(r, rules) for r in load_gold("test")]
        Xt, Rt = features(model, packer, test, 384)
        res["test_metrics"] = compute_metrics(*best[2](Xt, Rt), test, rules, maj)
    with open(os.path.join(args.out, "baseline_metrics.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({"wd": best[1], "val_mean_acc": best[0],
                      "test_mean_acc": res.get("test_metrics", {}).get("mean_accuracy")}))


if __name__ == "__main__":
    main()
