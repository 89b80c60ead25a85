"""Runs the parity fixture's packed inputs through onnxruntime (Python) on this machine.

  .venv/bin/python tests/parity_ort.py MODEL_DIR

Prints one JSON line per fixture row, shaped like the fixture's `expected_onnx`. tests/parity.rs
compares rulegate's Rust path against this, on the same machine and the same onnxruntime
build: int8 kernels differ between CPUs (VNNI or not), so values recorded on another machine
cannot bound the Rust path tightly. Rows run one at a time, as rulegate runs dynamic graphs.
"""
import json
import math
import sys

import numpy as np
import onnxruntime as ort


def activate(x, activation):
    if activation == "sigmoid":
        return 1.0 / (1.0 + math.exp(-x))
    return x


def main():
    model = sys.argv[1]
    manifest = json.load(open(f"{model}/manifest.json"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(f"{model}/model.onnx", options, providers=["CPUExecutionProvider"])
    names = manifest["inputs"]
    for line in open(f"{model}/parity.jsonl"):
        row = json.loads(line)
        ids = np.array([row["input_ids"]], dtype=np.int64)
        feeds = {names["input_ids"]: ids, names["attention_mask"]: np.ones_like(ids),
                 names["token_type_ids"]: np.array([row["token_type_ids"]], dtype=np.int64)}
        outputs = [o.name for o in session.get_outputs()]
        values = dict(zip(outputs, session.run(outputs, feeds)))
        out = {"propositions": {}, "response_type": {}, "prm": None}
        for head in manifest["heads"]:
            logits = values[head["output"]][0]
            if head["kind"] == "proposition":
                out["propositions"][head["name"]] = activate(float(logits[head.get("index", 0)]), head["activation"])
            elif head["kind"] == "response_type":
                z = np.exp(logits - logits.max())
                probs = z / z.sum()
                out["response_type"] = {label: float(p) for label, p in zip(head["labels"], probs)}
            elif head["kind"] == "prm":
                out["prm"] = activate(float(logits[head.get("index", 0)]), head["activation"])
        print(json.dumps(out))


if __name__ == "__main__":
    main()
