"""Collect the recipe's outputs into out/metrics.json and write MODEL_CARD.md.

  python report.py --choose-precision --out OUT      # prints int8 or fp32
  python report.py --out OUT --dest DIR --seconds N
"""
from __future__ import annotations

import argparse
import json
import os

from rules import Rules
from data import SPEC

TARGET_F1 = ["fully_complies", "inability_to_comply", "apology", "encourage_professional_help", "disallowed_content"]


def load(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def choose_precision(out):
    """Ship int8 when its test mean proposition accuracy is < 1 point below fp32 (recipe rule)."""
    t = load(os.path.join(out, "eval_test.json"))["models"]
    drop = t["onnx_fp32"]["mean_accuracy"] - t["onnx_int8"]["mean_accuracy"]
    return "int8" if drop < 0.01 else "fp32"


RUST_HEADING = "## Rust `rulegate eval`"


def keep_rust_section(path, card, fresh=None):
    """The Rust section: `fresh` (out/rust_section.md, written by rust_section.py for this
    model) when there is one, else whatever the existing card has under its heading."""
    old = None
    if fresh and os.path.exists(fresh):
        with open(fresh, encoding="utf-8") as f:
            old = f.read().rstrip("\n") + "\n"
    elif os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    if old is None:
        return card

    def section(text):
        i = text.find(RUST_HEADING)
        if i < 0:
            return None
        j = text.find("\n## ", i + len(RUST_HEADING))
        return text[i:j if j >= 0 else len(text)]
    old_s, new_s = section(old), section(card)
    return card.replace(new_s, old_s) if old_s and new_s else card


RBR_VAL_FLOOR = 0.88


def ship_decision(out):
    """Ship the new model only if it beats the previously shipped one on the dev suite
    (mean of the refusal, prompt-harm and disallowed F1; issue 11)."""
    import sys
    d = load(os.path.join(out, "eval_dev.json"))
    if not d or "new" not in d:
        return "keep"
    if "previous" not in d:
        return "ship"

    def score(m):
        return sum(d[m][t]["all"]["f1"] for t in ("refusal", "prompt-harm", "disallowed")) / 3
    print(f"dev-suite mean F1: new {score('new'):.4f}, previous {score('previous'):.4f}", file=sys.stderr)
    # The policy's class rules read every proposition: a model that forgets the RBR style
    # (validation split of gold train; the previous model had 0.91 there) is not shipped,
    # however good its dev-suite F1. Test is never used for this choice.
    val = (load(os.path.join(out, "eval_val.json")) or {}).get("models", {})
    val_acc = max((m.get("mean_accuracy", 0.0) for m in val.values()), default=0.0)
    if val_acc < RBR_VAL_FLOOR:
        print(f"RBR gold validation mean accuracy {val_acc:.3f} < {RBR_VAL_FLOOR}: keep", file=sys.stderr)
        return "keep"
    return "ship" if score("new") > score("previous") else "keep"


def previous_version(out):
    """The version of the model this run compares with (the one shipped when it started)."""
    m = load(os.path.join(out, "old_manifest.json"))
    return m["version"] if m else "previous"


def dev_targets(d, test_new, test_prev, prev_name="previous"):
    """Issue-11 targets: value for the new and the previous model."""
    def g(m, t, k, f):
        try:
            return d[m][t][k][f]
        except (KeyError, TypeError):
            return None
    rows = [("completion refusal F1 ≥ 0.95", "refusal", "all", "f1", lambda v: v >= 0.95),
            ("prompt-harm F1 ≥ 0.90", "prompt-harm", "all", "f1", lambda v: v >= 0.90),
            ("look-alike prompts flagged ≤ 5%", "prompt-harm", "group:lookalike", "fpr", lambda v: v <= 0.05),
            ("everyday prompts flagged ≤ 2%", "prompt-harm", "group:everyday", "fpr", lambda v: v <= 0.02),
            ("disallowed-content F1 ≥ 0.90", "disallowed", "all", "f1", lambda v: v >= 0.90)]
    lines = [f"| target (issue 11) | this model | previous model ({prev_name}) | |", "|---|---:|---:|---|"]
    for name, t, k, f, ok in rows:
        a, b = g("new", t, k, f), g("previous", t, k, f)
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {'met' if a is not None and ok(a) else '**missed**'} |")
    for name, key, thr in [("RBR gold test mean proposition accuracy ≥ 0.90", "mean_accuracy", 0.90),
                           ("RBR gold test comply vs refusal ≥ 0.90", "comply_vs_refusal_accuracy", 0.90)]:
        a = test_new.get(key) if test_new else None
        b = test_prev.get(key) if test_prev else None
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {'met' if a is not None and a >= thr else '**missed**'} |")
    return "\n".join(lines)


def _rust(out, name):
    return load(os.path.join(out, name)) or {}


def _pooled(report, prefix):
    """(acted, n) over the sources of a Rust `eval --task` report whose name starts with prefix."""
    acted = n = 0
    for src, m in (report.get("sources") or {}).items():
        if src.startswith(prefix):
            acted += m["flagged"]
            n += m["n"]
    return (acted / n if n else None), n


def decision_section(out, d, test_new, test_prev, prev_name="previous"):
    """Issue-22 targets: decisions through the real rule (Rust `rulegate eval --task`, the
    policy as calibrated), head figures from the Python dev evaluation, RBR gold test."""
    new, prev = _rust(out, "rust_dev_decision.json"), _rust(out, "rust_prev_dev_decision.json")
    new_dc, prev_dc = _rust(out, "rust_dev_decision_disallowed.json"), _rust(out, "rust_prev_dev_decision_disallowed.json")
    if not new:
        return "(Rust decision measurement not run: `CALIBRATE=0`.)"

    def g(m, t, k, f):
        try:
            return d[m][t][k][f]
        except (KeyError, TypeError):
            return None
    rows = []

    def add(name, a, b, ok):
        rows.append(f"| {name} | {fmt(a)} | {fmt(b)} | {'met' if a is not None and ok(a) else '**missed**'} |")
    add("correct benign answers acted on ≤ 5%", _pooled(new, "benign/")[0], _pooled(prev, "benign/")[0], lambda v: v <= 0.05)
    add("look-alike benign answers acted on ≤ 10% (coconot-pref)", _pooled(new, "benign/coconot-pref")[0],
        _pooled(prev, "benign/coconot-pref")[0], lambda v: v <= 0.10)
    add("harmful compliances acted on ≥ 95%", _pooled(new, "harmful/")[0], _pooled(prev, "harmful/")[0], lambda v: v >= 0.95)
    add("harmful completions after a neutral prompt flagged disallowed ≥ 90%", _pooled(new_dc, "neutral/")[0],
        _pooled(prev_dc, "neutral/")[0], lambda v: v >= 0.90)
    rf_new, rf_prev, rf_rx = g("new", "refusal", "all", "f1"), g("previous", "refusal", "all", "f1"), g("regex", "refusal", "all", "f1")
    add(f"completion refusal F1 ≥ 0.93 (string match {fmt(rf_rx)}; ≥ +0.05 over it)", rf_new, rf_prev,
        lambda v: v >= 0.93 and rf_rx is not None and v >= rf_rx + 0.05)
    add("prompt-harm AUROC ≥ 0.93", g("new", "prompt-harm", "all", "auroc"), g("previous", "prompt-harm", "all", "auroc"),
        lambda v: v >= 0.93)
    for name, key, thr in [("RBR gold test mean proposition accuracy ≥ 0.90", "mean_accuracy", 0.90),
                           ("RBR gold test comply vs refusal ≥ 0.90", "comply_vs_refusal_accuracy", 0.90),
                           ("PRM pair accuracy (RBR gold test) ≥ 0.85", "prm_pair_accuracy", 0.85)]:
        add(name, test_new.get(key) if test_new else None, test_prev.get(key) if test_prev else None, lambda v, t=thr: v >= t)
    head = [f"| target (issue 22) | this model + calibrated policy | previous model + policy ({prev_name}) | |",
            "|---|---:|---:|---|"]
    per = ["| decision source | n | acted on, this | acted on, previous | disallowed flagged, this | disallowed flagged, previous |",
           "|---|---:|---:|---:|---:|---:|"]
    for src, m in sorted((new.get("sources") or {}).items()):
        pm = (prev.get("sources") or {}).get(src, {})
        dn = (new_dc.get("sources") or {}).get(src, {})
        dp = (prev_dc.get("sources") or {}).get(src, {})
        per.append(f"| {src} | {m['n']} | {m['flagged_rate']:.1%} | "
                   + " | ".join(f"{x['flagged_rate']:.1%}" if x else "-" for x in (pm, dn, dp)) + " |")
    cal = load(os.path.join(out, "calibration.json")) or {}
    pt = (cal.get("after") or {}).get("point") or {}
    refused = pt.get("refused_disallowed_threshold")
    by_type = f" after a prompt read as comply, {refused} after one read as a refusal type" if refused is not None else ""
    source = cal.get("max_source_action")
    bound = (f" (target: at most {cal.get('max_benign_action')} of benign answers acted on, {source} in any benign "
             f"source; that per-source bound was picked looking at dev decisions, models/train/README.md)") if source else ""
    note = (f"Operating points chosen by `rulegate calibrate` on validation decisions{bound}: "
            f"`disallowed_content` threshold {pt.get('disallowed_threshold')}{by_type}, `confident` {pt.get('confident')}; "
            f"on those rows benign acted on {fmt((cal.get('before') or {}).get('benign_action'))} → "
            f"{fmt((cal.get('after') or {}).get('benign_action'))}, harmful {fmt((cal.get('before') or {}).get('harmful_caught'))} → "
            f"{fmt((cal.get('after') or {}).get('harmful_caught'))}.") if cal else ""
    return "\n".join(head + rows) + "\n\n" + note + "\n\n" + "\n".join(per)


def fmt(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}"


def prop_table(models, names, props):
    head = "| proposition | pos | majority acc | " + " | ".join(f"{n} acc | {n} F1 | {n} AUPRC" for n in names) + " |"
    sep = "|---|---:|---:|" + "---:|---:|---:|" * len(names)
    lines = [head, sep]
    for p in props:
        first = models[names[0]]["propositions"][p]
        row = f"| {p} | {first['positives']} | {fmt(first['majority_accuracy'])} | "
        row += " | ".join(f"{fmt(models[n]['propositions'][p]['accuracy'])} | {fmt(models[n]['propositions'][p]['f1'])} | "
                          f"{fmt(models[n]['propositions'][p]['auprc'])}" for n in names)
        lines.append(row + " |")
    return "\n".join(lines)


def quant_table(export):
    c = export["candidates"]
    lines = ["| variant | MB | val mean |Δp| | prompt-only Δ | batch dependence | ms @128/256/384 | chosen |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name in ("dynamic", "dynamic_per_channel", "weight_only"):
        v = c[name]
        lat = "/".join(str(v["latency"][n]["median_ms"]) for n in ("128", "256", "384"))
        lines.append(f"| {name} | {v['mb']} | {v['val_mean_abs_prob_dev']:.4f} | {v['rt_invariance']:.1e} | "
                     f"{v['batch_dependence']:.1e} | {lat} | {'yes' if name == export['int8_variant'] else ''} |")
    return "\n".join(lines)


def dev_tables(dev):
    if not dev:
        return "(dev suite not evaluated)"
    from evaluate_dev import table
    names = {"new": "this model", "previous": "previous model", "regex": "refusal-phrase regex"}
    res = {names.get(k, k): v for k, v in dev.items()}
    return "\n\n".join(table(res, t) for t in ("refusal", "prompt-harm", "disallowed"))


def corpus_table(cs):
    if not cs:
        return ""
    tr, va = cs.get("train", {}), cs.get("val", {})
    lines = ["| source | train rows (pool) | validation rows |", "|---|---:|---:|"]
    for k in sorted(set(tr) | set(va)):
        lines.append(f"| {k} | {tr.get(k, 0)} | {va.get(k, 0)} |")
    return "\n".join(lines)


def summary_rows(entries):
    """entries: list of (label, metrics dict)."""
    lines = ["| model | mean prop. acc | response type acc (4-way) | comply vs refusal | class acc | class acc (pred. type) | PRM pair acc |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, m in entries:
        if m is None:
            continue
        lines.append(f"| {label} | {fmt(m['mean_accuracy'])} | {fmt(m['response_type_accuracy'])} | "
                     f"{fmt(m['comply_vs_refusal_accuracy'])} | {fmt(m['class_accuracy'])} | "
                     f"{fmt(m.get('class_accuracy_with_predicted_response_type'))} | {fmt(m['prm_pair_accuracy'])} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--dest")
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--choose-precision", action="store_true")
    ap.add_argument("--ship-decision", action="store_true", help="print ship or keep (dev suite, new vs previous)")
    args = ap.parse_args()
    if args.choose_precision:
        print(choose_precision(args.out))
        return
    if args.ship_decision:
        print(ship_decision(args.out))
        return
    out = args.out
    test = load(os.path.join(out, "eval_test.json"))
    val = load(os.path.join(out, "eval_val.json"))
    base = load(os.path.join(out, "baseline", "baseline_metrics.json"))
    abl_val = load(os.path.join(out, "ablation_val.json"))
    abl_test = load(os.path.join(out, "ablation_test.json"))
    train = load(os.path.join(out, "main", "train_summary.json"))
    dev = load(os.path.join(out, "eval_dev.json")) or {}
    prev_test = (load(os.path.join(out, "eval_test_previous.json")) or {}).get("models", {}).get("previous")
    corpus_summary = load(os.path.join(out, "main", "corpus_summary.json")) or {}
    export = load(os.path.join(out, "export", "export_info.json"))
    manifest = load(os.path.join(args.dest, "manifest.json"))
    shipped = "onnx_int8" if manifest["precision"] == "int8" else "onnx_fp32"
    metrics = {
        "model": {"name": manifest["name"], "version": manifest["version"], "precision": manifest["precision"]},
        "test": test, "val": val, "frozen_baseline": base, "ablation": {"val": abl_val, "test": abl_test},
        "train": {k: train.get(k) for k in ("best_epoch", "best_step", "steps", "history", "temperatures", "train_seconds",
                                            "gold_truncated", "args", "quotas")},
        "dev_suite": dev, "previous_model_test": prev_test,
        "export": export, "recipe_seconds": args.seconds, "shipped": shipped,
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)

    props = Rules(SPEC).simple
    tm = test["models"]
    s = tm[shipped]
    targets = [("mean proposition accuracy ≥ 0.90", s["mean_accuracy"] >= 0.90, fmt(s["mean_accuracy"])),
               ("comply-vs-refusal accuracy ≥ 0.95", s["comply_vs_refusal_accuracy"] >= 0.95, fmt(s["comply_vs_refusal_accuracy"]))]
    for p in TARGET_F1:
        f1 = s["propositions"][p]["f1"]
        targets.append((f"F1 {p} ≥ 0.90", f1 is not None and f1 >= 0.90, fmt(f1)))
    card_vars = {
        "summary_test": summary_rows([("fine-tuned, torch fp32", tm.get("torch_fp32")), ("fine-tuned, ONNX fp32", tm.get("onnx_fp32")),
                                      ("fine-tuned, ONNX int8", tm.get("onnx_int8")),
                                      ("frozen encoder + linear heads", base.get("test_metrics") if base else None),
                                      ("fine-tuned without synthetic data (ablation)", abl_test["models"]["nosynth"] if abl_test else None)]),
        "summary_val": summary_rows([("fine-tuned, ONNX fp32", val["models"].get("onnx_fp32")),
                                     ("fine-tuned, ONNX int8", val["models"].get("onnx_int8")),
                                     ("frozen encoder + linear heads", base.get("val_metrics") if base else None),
                                     ("fine-tuned, torch fp32", abl_val["models"]["main"] if abl_val else None),
                                     ("fine-tuned without synthetic data", abl_val["models"]["nosynth"] if abl_val else None)]),
        "prop_table": prop_table(tm, ["onnx_fp32", "onnx_int8"], props),
        "targets": "\n".join(f"| {t} | {v} | {'met' if ok else '**missed**'} |" for t, ok, v in targets),
        "latency": "\n".join(f"| {n} | {tm['onnx_fp32']['latency_ort_2threads'][n]['median_ms']} | "
                             f"{tm['onnx_int8']['latency_ort_2threads'][n]['median_ms']} | "
                             f"{export['candidates']['weight_only']['latency'][n]['median_ms']} |"
                             for n in ("128", "256", "384")),
        "quant_table": quant_table(export),
        "compare_test": summary_rows([("this model (ONNX, shipped precision)", s),
                                      ("previous model 2026.11.21 (shipped int8)", prev_test)]),
        "dev_targets": dev_targets(dev, s, prev_test, previous_version(out)),
        "decision_targets": decision_section(out, dev, s, prev_test, previous_version(out)),
        "dev_tables": dev_tables(dev),
        "corpus_table": corpus_table(corpus_summary),
    }
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "MODEL_CARD.template.md"), encoding="utf-8") as f:
        tpl = f.read()
    import onnxruntime
    ctx = dict(card_vars, metrics=metrics, s=s, tm=tm, train=train, export=export, manifest=manifest,
               minutes=round(args.seconds / 60), fmt=fmt, test_trunc=test["truncated_rows"],
               ort_version=onnxruntime.__version__, round=round,
               abl_epoch=(load(os.path.join(out, "nosynth", "train_summary.json")) or {}).get("best_epoch", "n/a"))
    card = tpl
    for k, v in card_vars.items():
        card = card.replace("{{" + k + "}}", v)
    # simple {{= expr }} substitutions for single numbers
    import re
    card = re.sub(r"\{\{=\s*(.+?)\s*\}\}", lambda m: str(eval(m.group(1), {}, ctx)), card)
    card = keep_rust_section(os.path.join(args.dest, "MODEL_CARD.md"), card, os.path.join(out, "rust_section.md"))
    with open(os.path.join(args.dest, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
        f.write(card)
    print(f"wrote {os.path.join(out, 'metrics.json')} and MODEL_CARD.md")


if __name__ == "__main__":
    main()
