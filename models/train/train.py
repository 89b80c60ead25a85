"""Multi-task fine-tuning of MiniLM for rulegate (propositions, response type, PRM).

  python train.py --base DIR --out DIR [--no-synth] [--frozen-baseline]

Selection (checkpoint, temperatures) uses only the validation split of gold TRAIN.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from data import (SPEC, Example, Packer, convention_masks, gold_example, load_gold, load_jbb, load_tokenizer,
                  rt_index, split_train_val)
from evaluate import prm_pair_accuracy
from model import RuleGateModel
from rules import CLASS_VALUE, RESPONSE_TYPES, Rules
from synth import Generator

torch.set_num_threads(2)


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*(?:\d+[.)]|[-*•]|#))")


def prefix_cuts(text: str):
    """Character offsets where a partial completion may end: sentence, paragraph and
    list-step boundaries (the full text is not included)."""
    return sorted({m.start() for m in _BOUNDARY.finditer(text) if 0 < m.start() < len(text.rstrip())})


def prefix_example(ex: Example, rng: random.Random):
    cuts = prefix_cuts(ex.completion)
    if not cuts or ex.prm is None:
        return None
    cut = rng.choice(cuts)
    return Example(prompt=ex.prompt, completion=ex.completion[:cut].rstrip(), labels={k: None for k in ex.labels},
                   response_type=ex.response_type, prm=ex.prm, source=ex.source + "_prefix", weight=ex.weight)


def synth_examples(rows, masks, weight):
    out = []
    for r in rows:
        lab = dict(r["propositions"])
        if r["response_type"]:
            for p in masks[r["response_type"]]:
                lab[p] = None
        out.append(Example(prompt=r["prompt"], completion=r["completion"], labels=lab, response_type=r["response_type"],
                           prm=CLASS_VALUE[r["class"]] if r["class"] else None, source="synth", weight=weight,
                           meta={"family": r["family"], "class": r["class"]}))
    return out


# ---------------------------------------------------------------------------
# Tensors and batches
# ---------------------------------------------------------------------------
class Encoded:
    def __init__(self, packer: Packer, props, ex: Example, max_length):
        self.ids, self.tt, self.truncated = packer.pack(ex.prompt, ex.completion, max_length)
        self.y = np.array([0.0 if ex.labels.get(p) is None else float(ex.labels[p]) for p in props], np.float32)
        self.m = np.array([0.0 if ex.labels.get(p) is None else 1.0 for p in props], np.float32)
        self.rt = rt_index(ex.response_type)
        self.prm = -1.0 if ex.prm is None else float(ex.prm)
        self.w = ex.weight
        self.ex = ex


def collate(items, pad_id):
    t = max(len(e.ids) for e in items)
    b = len(items)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    am = torch.zeros((b, t), dtype=torch.long)
    tt = torch.zeros((b, t), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        am[i, :n] = 1
        tt[i, :n] = torch.tensor(e.tt)
    return {
        "input_ids": ids, "attention_mask": am, "token_type_ids": tt,
        "y": torch.tensor(np.stack([e.y for e in items])), "m": torch.tensor(np.stack([e.m for e in items])),
        "rt": torch.tensor([e.rt for e in items]), "prm": torch.tensor([e.prm for e in items], dtype=torch.float32),
        "w": torch.tensor([e.w for e in items], dtype=torch.float32),
    }


def length_batches(items, token_budget, rng, max_batch=64):
    """Length-bucketed dynamic batches: sort within shuffled chunks, cut by padded tokens."""
    idx = list(range(len(items)))
    rng.shuffle(idx)
    chunk = 256
    batches = []
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s:s + chunk], key=lambda i: len(items[i].ids))
        cur, cur_max = [], 0
        for i in part:
            n = len(items[i].ids)
            if cur and (max(cur_max, n) * (len(cur) + 1) > token_budget or len(cur) >= max_batch):
                batches.append(cur)
                cur, cur_max = [], 0
            cur.append(i)
            cur_max = max(cur_max, n)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------------------
# Loss and evaluation
# ---------------------------------------------------------------------------
def losses(out, batch, pos_weight, w_rt=1.0, w_prm=0.5):
    props, rt, prm = out
    w = batch["w"]
    bce = F.binary_cross_entropy_with_logits(props, batch["y"], pos_weight=pos_weight, reduction="none")
    mw = batch["m"] * w[:, None]
    l_prop = (bce * mw).sum() / mw.sum().clamp(min=1.0)
    known = batch["rt"] >= 0
    l_rt = (F.cross_entropy(rt[known], batch["rt"][known], reduction="none") * w[known]).sum() / w[known].sum() \
        if known.any() else props.new_zeros(())
    pk = batch["prm"] >= 0
    l_prm = (F.binary_cross_entropy_with_logits(prm[pk, 0], batch["prm"][pk], reduction="none") * w[pk]).sum() / w[pk].sum() \
        if pk.any() else props.new_zeros(())
    return l_prop + w_rt * l_rt + w_prm * l_prm, (l_prop.item(), l_rt.item(), l_prm.item())


@torch.no_grad()
def predict(model, encs, pad_id, token_budget=8192):
    """Raw (uncalibrated unless the model holds temperatures) logits in input order."""
    model.eval()
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    P = np.zeros((len(encs), 23), np.float32)
    R = np.zeros((len(encs), 4), np.float32)
    Q = np.zeros((len(encs),), np.float32)
    s = 0
    while s < len(order):
        n = len(encs[order[s]].ids)
        e = s
        while e < len(order) and len(encs[order[e]].ids) * (e - s + 1) <= token_budget:
            e += 1
        e = max(e, s + 1)
        chunk = order[s:e]
        b = collate([encs[i] for i in chunk], pad_id)
        p, r, q = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        P[chunk], R[chunk], Q[chunk] = p.numpy(), r.numpy(), q[:, 0].numpy()
        s = e
    return P, R, Q


def quick_metrics(P, R, Q, encs, rules):
    """Validation metrics used for checkpoint choice (gold rows: all labels known)."""
    y = np.stack([e.y for e in encs])
    pred = (P > 0).astype(np.float32)
    acc = (pred == y).mean(0)
    bce = float(F.binary_cross_entropy_with_logits(torch.tensor(P), torch.tensor(y)).item())
    rt = np.array([e.rt for e in encs])
    rt_acc = float((R.argmax(1) == rt).mean())
    prm_acc, _ = prm_pair_accuracy(rt, [e.prm for e in encs], Q)
    return {"mean_acc": float(acc.mean()), "acc": acc.tolist(), "bce": bce, "rt_acc": rt_acc,
            "prm_pair_acc": prm_acc or 0.0}


def fit_temperatures(P, R, Q, encs):
    """Temperature scaling on validation: one T for the 23 proposition logits, one for the
    response type, one for the PRM (soft targets). Returns (t_prop, t_rt, t_prm)."""
    y = torch.tensor(np.stack([e.y for e in encs]))
    rt = torch.tensor([e.rt for e in encs])
    prm = torch.tensor([e.prm for e in encs], dtype=torch.float32)

    def fit(loss_fn):
        log_t = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

        def closure():
            opt.zero_grad()
            loss = loss_fn(torch.exp(log_t.clamp(-3.0, 3.0)))
            loss.backward()
            return loss
        opt.step(closure)
        t = float(torch.exp(log_t.detach().clamp(-3.0, 3.0)))
        return t if math.isfinite(t) else 1.0

    Pt, Rt, Qt = torch.tensor(P), torch.tensor(R), torch.tensor(Q)
    t_prop = fit(lambda t: F.binary_cross_entropy_with_logits(Pt / t, y))
    t_rt = fit(lambda t: F.cross_entropy(Rt / t, rt))
    t_prm = fit(lambda t: F.binary_cross_entropy_with_logits(Qt / t, prm))
    return t_prop, t_rt, t_prm


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def build_data(args, rules, packer, log):
    gold_all = load_gold("train")
    train_rows, val_rows = split_train_val(gold_all)
    gold_tr = [gold_example(r, rules) for r in train_rows]
    gold_va = [gold_example(r, rules, source="gold_val") for r in val_rows]
    jbb = load_jbb(rules)
    for e in jbb:
        e.weight = args.w_jbb
    masks = convention_masks(train_rows, rules)
    synth = []
    if args.n_synth > 0:
        gen = Generator(rules, train_rows, jbb, seed=args.seed)
        synth = synth_examples([gen.sample() for _ in range(args.n_synth)], masks, args.w_synth)
    log(f"gold train {len(gold_tr)}  val {len(gold_va)}  jbb {len(jbb)}  synth pool {len(synth)}")
    return gold_tr, gold_va, jbb, synth


def epoch_examples(rng, gold_tr, jbb, synth, args):
    """Gold every epoch; fresh samples of JBB/synthetic data; PRM prefixes."""
    exs = list(gold_tr)
    exs += rng.sample(jbb, min(args.jbb_per_epoch, len(jbb)))
    if synth:
        exs += rng.sample(synth, min(args.synth_per_epoch, len(synth)))
    pre_src = gold_tr + [e for e in rng.sample(jbb, min(100, len(jbb))) if e.prm is not None]
    if synth:
        pre_src += rng.sample(synth, min(args.synth_prefix_per_epoch, len(synth)))
    pres = [p for p in (prefix_example(e, rng) for e in pre_src) if p is not None]
    return exs, pres


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="unpacked all-MiniLM-L6-v2 (model.safetensors, tokenizer.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--aux-max-length", type=int, default=192, help="packing length for JBB/synthetic/prefix rows")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--n-synth", type=int, default=6000)
    ap.add_argument("--synth-per-epoch", type=int, default=800)
    ap.add_argument("--synth-prefix-per-epoch", type=int, default=100)
    ap.add_argument("--jbb-per-epoch", type=int, default=250)
    ap.add_argument("--w-synth", type=float, default=1.0)
    ap.add_argument("--w-jbb", type=float, default=1.0)
    ap.add_argument("--no-synth", action="store_true")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="bf16 autocast for training forward passes (auto: if the CPU has avx512_bf16/amx)")
    ap.add_argument("--max-steps", type=int, default=0, help="debug: stop after N steps")
    args = ap.parse_args()
    if args.no_synth:
        args.n_synth = 0
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "train.log"), "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    set_seed(args.seed)
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and cpu_has_bf16())
    log(f"bf16 autocast: {use_bf16}")
    rules = Rules(SPEC)
    props = rules.simple
    tok = load_tokenizer(os.path.join(args.base, "tokenizer.json"))
    packer = Packer(tok, args.max_length)
    gold_tr, gold_va, jbb, synth = build_data(args, rules, packer, log)

    enc_cache = {}

    def enc(ex):
        key = id(ex)
        if key not in enc_cache:
            ml = args.max_length if ex.source in ("gold", "gold_val") else args.aux_max_length
            enc_cache[key] = Encoded(packer, props, ex, ml)
        return enc_cache[key]

    va_enc = [enc(e) for e in gold_va]
    n_trunc = sum(enc(e).truncated for e in gold_tr + gold_va)
    log(f"max_length {args.max_length}: {n_trunc}/{len(gold_tr) + len(gold_va)} gold train rows truncated")

    # Positive weights from every known training label: sqrt(neg/pos), clipped to [1, 10].
    all_lab = [e for e in gold_tr + jbb + synth]
    pos = np.zeros(len(props))
    neg = np.zeros(len(props))
    for e in all_lab:
        for i, p in enumerate(props):
            v = e.labels.get(p)
            if v is True:
                pos[i] += 1
            elif v is False:
                neg[i] += 1
    pos_weight = torch.tensor(np.clip(np.sqrt(neg / np.maximum(pos, 1)), 1.0, 10.0), dtype=torch.float32)
    log("pos_weight " + json.dumps({p: round(float(w), 2) for p, w in zip(props, pos_weight)}))

    model = RuleGateModel(len(props), len(RESPONSE_TYPES)).load_minilm(os.path.join(args.base, "model.safetensors"))
    # The 30k x 384 word-embedding table stays frozen: saves a third of each step on CPU
    # and keeps rare-token embeddings from drifting on a few hundred gold rows.
    model.word.weight.requires_grad_(False)
    enc_params = [p for p in model.encoder_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": enc_params, "lr": args.lr},
                             {"params": model.head_parameters(), "lr": args.head_lr}], weight_decay=0.01)
    # Steps per epoch are known only after sampling; estimate from the first epoch.
    ep_rng = random.Random(args.seed + 1)
    best = {"score": -1e9}
    history = []
    sched = None
    step = 0
    bad_epochs = 0
    t_start = time.time()
    for epoch in range(1, args.epochs + 1):
        exs, pres = epoch_examples(ep_rng, gold_tr, jbb, synth, args)
        items = [enc(e) for e in exs] + [Encoded(packer, props, p, args.aux_max_length) for p in pres]
        batches = length_batches(items, args.token_budget, ep_rng)
        if sched is None:
            total = len(batches) * args.epochs
            warm = max(1, int(0.06 * total))
            sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay
                opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
        model.train()
        agg = np.zeros(3)
        t0 = time.time()
        for bi, bidx in enumerate(batches):
            batch = collate([items[i] for i in bidx], packer.pad)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss, parts = losses([o.float() for o in out], batch, pos_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            agg += parts
            if bi % 20 == 0:
                log(f"ep {epoch} batch {bi}/{len(batches)} loss prop {parts[0]:.3f} rt {parts[1]:.3f} prm {parts[2]:.3f} "
                    f"({time.time() - t0:.0f}s)")
            if args.max_steps and step >= args.max_steps:
                break
        P, R, Q = predict(model, va_enc, packer.pad)
        m = quick_metrics(P, R, Q, va_enc, rules)
        score = m["mean_acc"] - 0.1 * m["bce"]  # accuracy first, validation loss breaks ties
        m.update(epoch=epoch, n_items=len(items), seconds=round(time.time() - t0, 1), score=score,
                 train_loss=(agg / max(1, len(batches))).tolist())
        history.append(m)
        log(f"epoch {epoch}: val mean_acc {m['mean_acc']:.4f} bce {m['bce']:.4f} rt_acc {m['rt_acc']:.3f} "
            f"prm_pair {m['prm_pair_acc']:.3f} items {len(items)} {m['seconds']}s")
        if score > best["score"]:
            best = {"score": score, "epoch": epoch, "state": {k: v.clone() for k, v in model.state_dict().items()}}
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= args.patience:
                log("early stop")
                break
        if args.max_steps and step >= args.max_steps:
            break

    model.load_state_dict(best["state"])
    P, R, Q = predict(model, va_enc, packer.pad)
    t_prop, t_rt, t_prm = fit_temperatures(P, R, Q, va_enc)
    model.t_prop.fill_(t_prop)
    model.t_rt.fill_(t_rt)
    model.t_prm.fill_(t_prm)
    log(f"best epoch {best['epoch']}; temperatures prop {t_prop:.3f} rt {t_rt:.3f} prm {t_prm:.3f}")
    torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
    with open(os.path.join(args.out, "train_summary.json"), "w") as f:
        json.dump({"args": vars(args), "best_epoch": best["epoch"], "history": history,
                   "temperatures": {"prop": t_prop, "rt": t_rt, "prm": t_prm},
                   "pos_weight": dict(zip(props, pos_weight.tolist())),
                   "train_seconds": round(time.time() - t_start, 1),
                   "gold_truncated": n_trunc}, f, indent=1)


if __name__ == "__main__":
    main()
