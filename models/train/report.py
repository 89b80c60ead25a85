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


def keep_rust_section(path, card):
    """A re-run keeps whatever the Rust side wrote under its heading in the existing card."""
    if not os.path.exists(path):
        return card
    with open(path, encoding="utf-8") as f:
        old = f.read()

    def section(text):
        i = text.find(RUST_HEADING)
        if i < 0:
            return None
        j = text.find("\n## ", i + len(RUST_HEADING))
        return text[i:j if j >= 0 else len(text)]
    old_s, new_s = section(old), section(card)
    return card.replace(new_s, old_s) if old_s and new_s else card


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
    args = ap.parse_args()
    if args.choose_precision:
        print(choose_precision(args.out))
        return
    out = args.out
    test = load(os.path.join(out, "eval_test.json"))
    val = load(os.path.join(out, "eval_val.json"))
    base = load(os.path.join(out, "baseline", "baseline_metrics.json"))
    abl_val = load(os.path.join(out, "ablation_val.json"))
    abl_test = load(os.path.join(out, "ablation_test.json"))
    train = load(os.path.join(out, "main", "train_summary.json"))
    export = load(os.path.join(out, "export", "export_info.json"))
    manifest = load(os.path.join(args.dest, "manifest.json"))
    shipped = "onnx_int8" if manifest["precision"] == "int8" else "onnx_fp32"
    metrics = {
        "model": {"name": manifest["name"], "version": manifest["version"], "precision": manifest["precision"]},
        "test": test, "val": val, "frozen_baseline": base, "ablation": {"val": abl_val, "test": abl_test},
        "train": {k: train[k] for k in ("best_epoch", "history", "temperatures", "train_seconds", "gold_truncated", "args")},
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
    card = keep_rust_section(os.path.join(args.dest, "MODEL_CARD.md"), card)
    with open(os.path.join(args.dest, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
        f.write(card)
    print(f"wrote {os.path.join(out, 'metrics.json')} and MODEL_CARD.md")


if __name__ == "__main__":
    main()
