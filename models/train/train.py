"""Multi-task fine-tuning of MiniLM for rulegate (propositions, response type, PRM) on the
issue-11 corpus (corpus.py: every folder of ../shared/data + lookalike.py generated rows).

  python train.py --base DIR --out DIR [--time-budget-min 50] [--rows-per-epoch N] [--epochs N]

Selection (checkpoint, temperatures) uses the validation split only: gold TRAIN's
validation part plus the validation groups of the corpus (never dev, never rbr-gold test).
Per-source sampling (sqrt of source size) keeps any one source from dominating an epoch.
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


def fit_temperature(loss_fn):
    """One temperature T in [e^-3, e^3] minimising loss_fn(T) (LBFGS on log T); 1.0 if it diverges."""
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


# ---------------------------------------------------------------------------
# Validation metrics for the corpus tasks (issue 11)
# ---------------------------------------------------------------------------
def f1_binary(y, p):
    y, p = np.asarray(y, bool), np.asarray(p, bool)
    tp = float((y & p).sum())
    fp = float((~y & p).sum())
    fn = float((y & ~p).sum())
    return 2 * tp / max(1.0, 2 * tp + fp + fn)


def flagged(R, threshold=0.6):
    """The shipped policy's prompt check: argmax response type != comply and its probability >= 0.6."""
    z = R - R.max(1, keepdims=True)
    pr = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    a = pr.argmax(1)
    return (a != 0) & (pr[np.arange(len(a)), a] >= threshold)


def task_metrics(P, R, encs, props):
    """prompt-harm F1 (+ false-positive rate on benign prompt rows), refusal F1
    (refusal = fully_complies < 0.5) and disallowed F1 on the corpus validation rows."""
    i_fc, i_dc = props.index("fully_complies"), props.index("disallowed_content")
    out = {}
    rows = [i for i, e in enumerate(encs) if e.rt >= 0 and e.ex.meta.get("prompt_only")]
    if rows:
        y = np.array([encs[i].rt != 0 for i in rows])
        p = flagged(R[rows])
        out["prompt_harm_f1"] = f1_binary(y, p)
        out["prompt_harm_fpr"] = float(p[~y].mean()) if (~y).any() else 0.0
    rows = [i for i, e in enumerate(encs) if e.m[i_fc] > 0 and not e.ex.meta.get("prompt_only")]
    if rows:
        y = np.array([encs[i].y[i_fc] < 0.5 for i in rows])
        out["refusal_f1"] = f1_binary(y, P[rows, i_fc] < 0)
    rows = [i for i, e in enumerate(encs) if e.m[i_dc] > 0 and not e.ex.meta.get("prompt_only")]
    if rows:
        y = np.array([encs[i].y[i_dc] > 0.5 for i in rows])
        out["disallowed_f1"] = f1_binary(y, P[rows, i_dc] > 0)
    return out


def fit_temperatures_masked(P, R, Q, encs):
    """Temperature scaling on validation with masked labels (corpus rows are partially labelled)."""
    y = torch.tensor(np.stack([e.y for e in encs]))
    m = torch.tensor(np.stack([e.m for e in encs]))
    rt = torch.tensor([e.rt for e in encs])
    prm = torch.tensor([e.prm for e in encs], dtype=torch.float32)
    Pt, Rt, Qt = torch.tensor(P), torch.tensor(R), torch.tensor(Q)
    known_rt, known_prm = rt >= 0, prm >= 0

    t_prop = fit_temperature(lambda t: (F.binary_cross_entropy_with_logits(Pt / t, y, reduction="none") * m).sum() / m.sum())
    t_rt = fit_temperature(lambda t: F.cross_entropy(Rt[known_rt] / t, rt[known_rt])) if known_rt.any() else 1.0
    t_prm = fit_temperature(lambda t: F.binary_cross_entropy_with_logits(Qt[known_prm] / t, prm[known_prm])) if known_prm.any() else 1.0
    return t_prop, t_rt, t_prm


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
# Issue 22: the decision rests on the completion's own evidence and on prompts that are not
# fooled by words; these sources carry it, so they get a larger share of each epoch.
# 2026-12-02 continuation: gptfuzz and the CoCoNot look-alike answers up (1.5 -> 2.0), the two
# dev decision sources furthest from their targets after the first run (harmful compliances
# with their own prompt acted on 84%, look-alike answers 18%).
BOOST = {"gen/neutral+harm": 2.0, "gen/neutral+benign": 1.5, "gptfuzz": 2.0, "jbb": 1.3, "refusal-direction": 1.3,
         "hate/hatecheck": 0.7, "lookalike/webquestions-sensitive": 1.5, "lookalike/awesome-persona": 1.5,
         "lookalike/coconot-pref+answer": 2.0, "lookalike/coconot-pref": 2.0, "lookalike/coconot-contrast": 1.5,
         "gen/wrapped-benign": 1.3, "gen/deflection": 1.2, "gen/ai-opener+answer": 1.2, "style/chatgpt-refusals": 1.3}


def source_quotas(pool, rows_per_epoch, caps=None):
    """Rows per source per epoch: proportional to sqrt(size) (times BOOST), at most the source
    size, so that no source dominates (gptfuzz, gsm8k) and small ones still appear."""
    sizes = {s: len(v) for s, v in pool.items()}
    z = sum(math.sqrt(n) for n in sizes.values())
    q = {}
    for s, n in sizes.items():
        q[s] = min(n, max(20, int(round(rows_per_epoch * BOOST.get(s, 1.0) * math.sqrt(n) / z))))
        if caps and s in caps:
            q[s] = min(q[s], caps[s])
    return q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="unpacked all-MiniLM-L6-v2 (model.safetensors, tokenizer.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-length", type=int, default=384, help="packing length for gold rows and validation")
    ap.add_argument("--pair-max-length", type=int, default=192, help="packing length for completion rows")
    ap.add_argument("--prompt-max-length", type=int, default=96, help="packing length for prompt-only rows")
    ap.add_argument("--wrapped-max-length", type=int, default=160, help="prompt-only rows of generated wrappers")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rows-per-epoch", type=int, default=12000)
    ap.add_argument("--freeze-layers", type=int, default=2, help="freeze the embeddings and the first N encoder layers (CPU speed)")
    ap.add_argument("--val-max-length", type=int, default=256, help="packing length for corpus validation rows")
    ap.add_argument("--val-per-source", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=300, help="validation every N steps (and at epoch ends)")
    ap.add_argument("--patience", type=int, default=4, help="validations without improvement before stopping")
    ap.add_argument("--time-budget-min", type=float, default=0.0,
                    help="wall-clock budget for the training loop; the LR decays linearly over it and training stops at it")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--prefix-per-epoch", type=int, default=300, help="PRM prefix rows per epoch")
    ap.add_argument("--n-generated-scale", type=float, default=1.0)
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--max-steps", type=int, default=0, help="debug: stop after N steps")
    ap.add_argument("--gold-repeat", type=int, default=1, help="gold TRAIN rows per epoch = N x 299")
    ap.add_argument("--sample-seed", type=int, default=None, help="seed of the per-epoch sampling (default seed+1)")
    ap.add_argument("--init", default=None, help="continue from a checkpoint (state dict; temperatures reset to 1)")
    ap.add_argument("--dev-out", default=None, help="write the dev suite JSONL files here")
    ap.add_argument("--resume", action="store_true",
                    help="continue from OUT/ckpt.pt (weights, optimizer, step, best so far, elapsed time); "
                         "a fresh epoch sample is drawn")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "train.log"), "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    from corpus import Corpus
    set_seed(args.seed)
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and cpu_has_bf16())
    log(f"bf16 autocast: {use_bf16}; args {vars(args)}")
    rules = Rules(SPEC)
    props = rules.simple
    tok = load_tokenizer(os.path.join(args.base, "tokenizer.json"))
    packer = Packer(tok, args.max_length)
    sc = args.n_generated_scale
    gen_n = {k: int(v * sc) for k, v in {"lookalike": 3000, "contrast": 1200, "wrapped": 5000, "styles": 3000,
                                         "short": 800, "windows": 500, "synth": 2000, "neutral": 3000,
                                         "deflection": 1500, "filler": 800}.items()}
    corpus = Corpus(rules, seed=args.seed, n_generated=gen_n)
    if args.dev_out:
        corpus.write_dev(args.dev_out)
        # rulegate calibrate's rows: validation groups only, so the dev suite stays a measurement.
        corpus.write_calibration(os.path.join(os.path.dirname(os.path.abspath(args.dev_out)), "calib", "decision.jsonl"))
    summ = corpus.summary()
    log("corpus " + json.dumps({"train": len(corpus.train), "val": len(corpus.val), "gold_val": len(corpus.gold_val),
                                "dev": {k: len(v) for k, v in corpus.dev.items()}}))
    with open(os.path.join(args.out, "corpus_summary.json"), "w") as f:
        json.dump(summ, f, indent=1)

    gold_tr = [e for e in corpus.train if e.source == "gold"]
    pool = {}
    for e in corpus.train:
        if e.source != "gold":
            pool.setdefault(e.source, []).append(e)

    enc_cache = {}

    def length_for(ex):
        if ex.source in ("gold", "gold_val"):
            return args.max_length
        if ex.meta.get("prompt_only"):
            return args.wrapped_max_length if ex.source.startswith("gen/wrapped") else args.prompt_max_length
        return args.pair_max_length

    def enc(ex, ml=None):
        key = id(ex)
        if key not in enc_cache:
            enc_cache[key] = Encoded(packer, props, ex, ml or length_for(ex))
        return enc_cache[key]

    # validation: gold val (all labels known) + corpus val rows, packed as the runtime does (384)
    va_gold = [enc(e, args.max_length) for e in corpus.gold_val]
    vrng = random.Random(20)  # fixed validation sample (comparable across runs)
    by_src = {}
    for e in corpus.val:
        by_src.setdefault(e.source, []).append(e)
    val_rows = [e for s in sorted(by_src) for e in
                (vrng.sample(by_src[s], args.val_per_source) if len(by_src[s]) > args.val_per_source else by_src[s])]
    va_corp = [enc(e, args.val_max_length) for e in val_rows]
    log(f"validation rows: gold {len(va_gold)}, corpus {len(va_corp)}")

    # Positive weights from every known training label: sqrt(neg/pos), clipped to [1, 10].
    pos = np.zeros(len(props))
    neg = np.zeros(len(props))
    for e in corpus.train:
        for i, p in enumerate(props):
            v = e.labels.get(p)
            if v is True:
                pos[i] += 1
            elif v is False:
                neg[i] += 1
    pos_weight = torch.tensor(np.clip(np.sqrt(neg / np.maximum(pos, 1)), 1.0, 10.0), dtype=torch.float32)
    log("pos_weight " + json.dumps({p: round(float(w), 2) for p, w in zip(props, pos_weight)}))

    model = RuleGateModel(len(props), len(RESPONSE_TYPES)).load_minilm(os.path.join(args.base, "model.safetensors"))
    if args.init:
        sd = torch.load(args.init, map_location="cpu")
        model.load_state_dict(sd)
        for t in (model.t_prop, model.t_rt, model.t_prm):
            t.fill_(1.0)
        log(f"initialised from {args.init}")
    model.word.weight.requires_grad_(False)  # frozen word embeddings (speed, rare-token stability)
    if args.freeze_layers > 0:  # 2 shared CPU cores: no backward pass through the lowest layers
        for mod in [model.pos, model.ttype, model.emb_ln] + list(model.layers[:args.freeze_layers]):
            for p in mod.parameters():
                p.requires_grad_(False)
    enc_params = [p for p in model.encoder_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": enc_params, "lr": args.lr},
                             {"params": model.head_parameters(), "lr": args.head_lr}], weight_decay=0.01)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ep_rng = random.Random(args.sample_seed if args.sample_seed is not None else args.seed + 1)
    quotas = source_quotas(pool, args.rows_per_epoch)
    log("per-epoch quotas " + json.dumps(quotas))
    budget_s = args.time_budget_min * 60 if args.time_budget_min > 0 else None
    best = {"score": -1e9, "step": 0}
    history = []
    step = 0
    bad = 0
    t_start = time.time()
    planned_steps = None

    def lr_factor():
        if budget_s:
            frac = (time.time() - t_start) / budget_s
        else:
            frac = step / max(1, planned_steps or 1)
        if frac < 0.04:
            return max(0.05, frac / 0.04)
        return max(0.02, (1.0 - frac) / 0.96)

    def validate(tag):
        nonlocal bad, best
        t0 = time.time()
        Pg, Rg, Qg = predict(model, va_gold, packer.pad)
        mg = quick_metrics(Pg, Rg, Qg, va_gold, rules)
        Pc, Rc, Qc = predict(model, va_corp, packer.pad)
        mc = task_metrics(Pc, Rc, va_corp, props)
        parts = [mg["mean_acc"], mc.get("prompt_harm_f1", 0), 1 - mc.get("prompt_harm_fpr", 0),
                 mc.get("refusal_f1", 0), mc.get("disallowed_f1", 0), mg["rt_acc"]]
        score = float(np.mean(parts)) - 0.02 * mg["bce"]
        rec = {"tag": tag, "step": step, "elapsed": round(time.time() - t_start), "score": score,
               "gold_mean_acc": mg["mean_acc"], "gold_rt_acc": mg["rt_acc"], "gold_prm_pair": mg["prm_pair_acc"],
               "gold_bce": mg["bce"], **mc, "val_seconds": round(time.time() - t0, 1)}
        history.append(rec)
        log("val " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}))
        if score > best["score"]:
            best = {"score": score, "step": step, "tag": tag,
                    "state": {k: v.clone() for k, v in model.state_dict().items()}}
            bad = 0
        else:
            bad += 1
        save_checkpoint()
        model.train()

    ckpt_path = os.path.join(args.out, "ckpt.pt")

    def save_checkpoint():
        """Everything --resume needs, written atomically after every validation."""
        tmp = ckpt_path + ".tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "epoch": epoch_now[0],
                    "best": best, "bad": bad, "history": history, "elapsed": time.time() - t_start,
                    "planned_steps": planned_steps}, tmp)
        os.replace(tmp, ckpt_path)

    epoch_now = [1]
    first_epoch = 1
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, best, bad, history = ck["step"], ck["best"], ck["bad"], ck["history"]
        planned_steps = ck["planned_steps"]
        t_start = time.time() - ck["elapsed"]
        first_epoch = ck["epoch"]
        ep_rng.seed(args.seed * 7919 + step)
        log(f"resumed from {ckpt_path}: step {step}, epoch {first_epoch}, {ck['elapsed'] / 60:.1f} min done, "
            f"best {best.get('tag')}")

    stop = False
    for epoch in range(first_epoch, args.epochs + 1):
        epoch_now[0] = epoch
        exs = list(gold_tr) * max(1, args.gold_repeat)
        for s, rows in sorted(pool.items()):
            exs += ep_rng.sample(rows, quotas[s])
        pre_src = [e for e in exs if e.prm is not None and e.completion and e.source != "gen/window"]
        pre_src = ep_rng.sample(pre_src, min(args.prefix_per_epoch, len(pre_src)))
        pres = [p for p in (prefix_example(e, ep_rng) for e in pre_src) if p is not None]
        items = [enc(e) for e in exs] + [Encoded(packer, props, p, args.pair_max_length) for p in pres]
        batches = length_batches(items, args.token_budget, ep_rng)
        if planned_steps is None:
            planned_steps = len(batches) * args.epochs
            log(f"epoch rows {len(items)} batches {len(batches)} tokens "
                f"{sum(len(it.ids) for it in items)}; planned steps {planned_steps}")
        model.train()
        t0 = time.time()
        for bi, bidx in enumerate(batches):
            f = lr_factor()
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * f
            batch = collate([items[i] for i in bidx], packer.pad)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss, parts = losses([o.float() for o in out], batch, pos_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            step += 1
            if bi % 20 == 0:
                log(f"ep {epoch} batch {bi}/{len(batches)} step {step} lr x{f:.3f} loss prop {parts[0]:.3f} "
                    f"rt {parts[1]:.3f} prm {parts[2]:.3f} ({time.time() - t0:.0f}s, {len(bidx)} rows)")
            if args.max_steps and step >= args.max_steps:
                stop = True
                break
            if budget_s and time.time() - t_start >= budget_s:
                log("time budget reached")
                stop = True
                break
            if args.eval_every and step % args.eval_every == 0:
                validate(f"ep{epoch}-step{step}")
                if bad >= args.patience:
                    log("early stop")
                    stop = True
                    break
        if stop:
            break
        validate(f"ep{epoch}-end")
        if bad >= args.patience:
            log("early stop")
            break
    if not history or history[-1]["step"] != step:
        validate(f"final-step{step}")

    model.load_state_dict(best["state"])
    P, R, Q = predict(model, va_gold + va_corp, packer.pad)
    t_prop, t_rt, t_prm = fit_temperatures_masked(P, R, Q, va_gold + va_corp)
    model.t_prop.fill_(t_prop)
    model.t_rt.fill_(t_rt)
    model.t_prm.fill_(t_prm)
    log(f"best {best['tag']} (step {best['step']}); temperatures prop {t_prop:.3f} rt {t_rt:.3f} prm {t_prm:.3f}")
    torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
    with open(os.path.join(args.out, "train_summary.json"), "w") as f:
        json.dump({"args": vars(args), "best": best["tag"], "best_epoch": best["tag"], "best_step": best["step"],
                   "gold_truncated": sum(e.truncated for e in va_gold), "history": history,
                   "temperatures": {"prop": t_prop, "rt": t_rt, "prm": t_prm},
                   "pos_weight": dict(zip(props, pos_weight.tolist())), "quotas": quotas,
                   "train_seconds": round(time.time() - t_start, 1), "steps": step}, f, indent=1)


if __name__ == "__main__":
    main()
