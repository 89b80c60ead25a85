"""The same verdict path in Python, for the side-by-side table in benches/README.md: the
shipped tokenizer (HF `tokenizers`) packs a (prompt, completion) pair as the model contract
says, and onnxruntime runs the shipped graph, one row at a time as rulegate runs a dynamically
quantised graph. Prints one JSON line per size: median and p90 milliseconds per pair.

  .venv/bin/python benches/python_pipeline.py [MODEL_DIR] [THREADS]
"""
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

PROMPT = "user: Summarise the quarterly sales report for the board, focusing on the trends in each region."


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else "models/rulegate-minilm-rbr"
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    manifest = json.load(open(f"{model}/manifest.json"))
    max_length = manifest["encoding"]["max_length"]
    tok = Tokenizer.from_file(f"{model}/tokenizer.json")
    tok.no_padding()
    tok.no_truncation()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(f"{model}/model.onnx", options, providers=["CPUExecutionProvider"])

    def pack(completion):
        p = tok.encode(PROMPT, add_special_tokens=False).ids
        c = tok.encode(completion, add_special_tokens=False).ids
        budget = max_length - 3
        c = c[: budget - min(len(p), manifest["encoding"]["min_prompt_tokens"])]
        p = p[len(p) - min(len(p), budget - len(c)):]
        ids = np.array([[cls] + p + [sep] + c + [sep]], np.int64)
        types = np.array([[0] * (len(p) + 2) + [1] * (len(c) + 1)], np.int64)
        return ids, types

    def verdict(completion):
        ids, types = pack(completion)
        return session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types})

    for tokens in (128, 256, 512):
        words = max(1, tokens - 25)
        completion = " ".join(("the data shows a steady rise " * tokens).split()[:words])
        for _ in range(5):
            verdict(completion)
        times = []
        for _ in range(40):
            t0 = time.perf_counter()
            verdict(completion)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        print(json.dumps({"pipeline": "python", "tokens": tokens, "packed": int(pack(completion)[0].shape[1]), "median_ms": round(statistics.median(times), 2),
                          "p90_ms": round(times[int(len(times) * 0.9)], 2), "threads": threads or "all"}))


if __name__ == "__main__":
    main()
