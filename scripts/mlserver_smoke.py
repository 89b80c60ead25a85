#!/usr/bin/env python3
"""Smoke test of the MLServer side of rulegate's remote classifier backend.

Starts MLServer (deploy/mlserver: rulegate_runtime.OnnxEncoderRuntime, settings.json,
model-settings.json) on free loopback ports with the shipped model, from a temporary
directory, and checks it as rulegate's remote backend will use it:

- /v2/health/ready, then the model's metadata (name, versions, inputs, outputs);
- an HTTP/JSON infer of a 2-row right-padded batch, and gRPC infers of the same batch with
  ``contents.int64_contents`` (what rulegate sends) and with ``raw_input_contents``: every
  output must equal ONNX Runtime run in-process on each row alone, unpadded (what rulegate's
  in-process backend computes for a dynamically quantised graph), max abs diff < 1e-5, and
  the heads must match the model's parity file (models/.../parity.jsonl, ``expected_onnx``);
- concurrent single-row requests of different lengths (what adaptive batching would merge);
- a malformed request answers 400;
- the median latency of 50 single-row HTTP and 50 single-row gRPC requests;
then stops the server (SIGTERM) and exits 0, or 1 on any failure.

Rows come from the model's parity file: encoded by the contract's pair packing
(docs/model-contract.md), so no tokenizer is needed here.

Usage: .venv-mlserver/bin/python scripts/mlserver_smoke.py [--model-dir DIR] [--requests N]
       [--parallel-workers N] [--max-batch-size N --max-batch-time S] [--keep-logs]
(run scripts/setup-mlserver.sh first; started with another Python it re-runs itself under
.venv-mlserver/bin/python).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("RULEGATE_MLSERVER_VENV", ROOT / ".venv-mlserver"))
if not VENV.is_absolute():
    VENV = ROOT / VENV
DEPLOY = ROOT / "deploy" / "mlserver"
TOLERANCE = 1e-5
PARITY_TOLERANCE = 1e-4

if Path(sys.prefix).resolve() != VENV.resolve():
    python = VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"[mlserver-smoke] {python} is missing: run scripts/setup-mlserver.sh first")
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from mlserver.grpc import dataplane_pb2 as pb  # noqa: E402
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc  # noqa: E402

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
failures: list[str] = []


def say(msg: str) -> None:
    print(f"[mlserver-smoke] {msg}", flush=True)


def check(ok: bool, what: str) -> bool:
    say(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)
    return ok


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def pad_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Right-pads rows (pad id 0, mask 0, type 0) to the longest, as rulegate packs a batch."""
    seq = max(len(r["input_ids"]) for r in rows)
    out = {n: np.zeros((len(rows), seq), dtype=np.int64) for n in INPUTS}
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        out["input_ids"][i, :n] = r["input_ids"]
        out["attention_mask"][i, :n] = 1
        out["token_type_ids"][i, :n] = r["token_type_ids"]
    return out


class Reference:
    """ONNX Runtime in-process with rulegate's session options; one row at a time, unpadded."""

    def __init__(self, model: Path):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def rows(self, rows: list[dict]) -> dict[str, np.ndarray]:
        parts: dict[str, list] = {n: [] for n in self.outputs}
        for r in rows:
            values = self.session.run(None, pad_batch([r]))
            for n, v in zip(self.outputs, values):
                parts[n].append(v)
        return {n: np.concatenate(p, axis=0) for n, p in parts.items()}

    def whole_batch(self, rows: list[dict]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(None, pad_batch(rows))))


def max_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape:
            return float("inf")
        worst = max(worst, float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()))
    return worst


def heads(manifest: dict, outputs: dict[str, np.ndarray], row: int) -> dict:
    """The manifest's head values for one row, shaped like parity.jsonl's expected_onnx."""
    sig = lambda x: 1.0 / (1.0 + np.exp(-float(x)))  # noqa: E731
    result: dict = {"propositions": {}}
    for h in manifest["heads"]:
        values = outputs[h["output"]][row]
        if h["kind"] == "proposition":
            result["propositions"][h["name"]] = sig(values[h["index"]])
        elif h["kind"] == "response_type":
            e = np.exp(values.astype(np.float64) - values.max())
            result["response_type"] = dict(zip(h["labels"], (e / e.sum()).tolist()))
        elif h["kind"] == "prm":
            result["prm"] = sig(values[h["index"]])
    return result


def flat_numbers(value) -> list[float]:
    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from walk(x)
        elif isinstance(v, list):
            for x in v:
                yield from walk(x)
        else:
            yield float(v)

    return list(walk(value))


class Http:
    """One keep-alive connection, as rulegate's pooled hyper client keeps."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()


def http_body(batch: dict[str, np.ndarray]) -> dict:
    shape = list(batch["input_ids"].shape)
    return {
        "inputs": [
            {"name": n, "shape": shape, "datatype": "INT64", "data": batch[n].reshape(-1).tolist()} for n in INPUTS
        ]
    }


def http_outputs(body: dict) -> dict[str, np.ndarray]:
    return {
        o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in body["outputs"]
    }


def grpc_request(model: str, version: str, batch: dict[str, np.ndarray], raw: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    shape = list(batch["input_ids"].shape)
    for n in INPUTS:
        tensor = request.inputs.add(name=n, datatype="INT64", shape=shape)
        if raw:
            request.raw_input_contents.append(batch[n].astype("<i8").tobytes())
        else:
            tensor.contents.int64_contents.extend(batch[n].reshape(-1).tolist())
    return request


def grpc_outputs(response: pb.ModelInferResponse) -> tuple[dict[str, np.ndarray], str]:
    out = {}
    where = set()
    for i, o in enumerate(response.outputs):
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[i], dtype="<f4")
            where.add("raw_output_contents")
        else:
            values = np.asarray(o.contents.fp32_contents, dtype=np.float32)
            where.add("contents.fp32_contents")
        out[o.name] = values.reshape(list(o.shape))
    return out, ", ".join(sorted(where))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=str(ROOT / "models" / "rulegate-minilm-rbr"))
    parser.add_argument("--requests", type=int, default=50, help="single-row requests timed per protocol")
    parser.add_argument("--parallel-workers", type=int, help="override settings.json's parallel_workers")
    parser.add_argument("--max-batch-size", type=int, help="override model-settings.json's max_batch_size")
    parser.add_argument("--max-batch-time", type=float, help="override model-settings.json's max_batch_time")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--keep-logs", action="store_true", help="print the server's log at the end")
    args = parser.parse_args()

    model_dir = Path(args.model_dir).resolve()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    # Rows to send: the model's parity file, else the shipped model's (same tokenizer assumed).
    parity_path = model_dir / "parity.jsonl"
    args.check_parity = parity_path.is_file()
    if not args.check_parity:
        parity_path = ROOT / "models" / "rulegate-minilm-rbr" / "parity.jsonl"
        say(f"{model_dir} has no parity.jsonl: sending the rows of {parity_path}, not checking expected heads")
    parity = [json.loads(line) for line in parity_path.read_text().splitlines() if line.strip()]
    by_id = {r["id"]: r for r in parity}
    reference = Reference(model_dir / "model.onnx")

    settings = json.loads((DEPLOY / "settings.json").read_text())
    model_settings = json.loads((DEPLOY / "rulegate-minilm-rbr" / "model-settings.json").read_text())
    name, version = model_settings["name"], model_settings["parameters"]["version"]
    http_port, grpc_port, metrics_port = free_ports(3)
    settings.update(host="127.0.0.1", http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    if args.parallel_workers is not None:
        settings["parallel_workers"] = args.parallel_workers
    model_settings["parameters"]["uri"] = str(model_dir)
    if args.max_batch_size is not None:
        model_settings["max_batch_size"] = args.max_batch_size
    if args.max_batch_time is not None:
        model_settings["max_batch_time"] = args.max_batch_time

    if model_dir == (ROOT / "models" / "rulegate-minilm-rbr").resolve():
        check(
            version == manifest["version"] and model_settings.get("versions") == [version],
            f"model-settings.json version {version} and versions {model_settings.get('versions')} = manifest version {manifest['version']}",
        )
    else:  # another export: serve it under its own manifest's version
        version = manifest["version"]
        model_settings["parameters"]["version"] = version
        model_settings["versions"] = [version]

    workdir = Path(tempfile.mkdtemp(prefix="rulegate-mlserver-"))
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    (workdir / name).mkdir()
    (workdir / name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    log_path = workdir / "mlserver.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(DEPLOY), os.environ.get("PYTHONPATH")])))
    env.pop("RULEGATE_MODEL_DIR", None)
    say(
        f"starting MLServer: http {http_port}, grpc {grpc_port}, metrics {metrics_port}, "
        f"parallel_workers {settings.get('parallel_workers')}, max_batch_size {model_settings.get('max_batch_size')}, "
        f"model {model_dir} (settings in {workdir})"
    )
    started = time.monotonic()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(VENV / "bin" / "mlserver"), "start", str(workdir)],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        return run_checks(args, server, started, log_path, http_port, grpc_port, name, version, manifest, by_id, reference)
    finally:
        stop(server)
        if args.keep_logs or failures:
            say(f"server log ({log_path}):")
            print(log_path.read_text(errors="replace")[-6000:])
        shutil.rmtree(workdir, ignore_errors=True)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        check(False, f"server still running at the end (it exited with {server.returncode})")
        return
    t = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=30)
        check(True, f"server stopped on SIGTERM in {time.monotonic() - t:.1f} s (exit code {code})")
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        check(False, "server did not stop within 30 s of SIGTERM (killed)")


def run_checks(args, server, started, log_path, http_port, grpc_port, name, version, manifest, by_id, reference) -> int:
    # 1. Readiness.
    deadline = started + args.startup_timeout
    ready = False
    while time.monotonic() < deadline and server.poll() is None:
        try:
            status, _ = Http(http_port).request("GET", "/v2/health/ready")
            if status == 200:
                ready = True
                break
        except OSError:
            pass
        time.sleep(0.25)
    if not check(ready, f"/v2/health/ready answered 200 after {time.monotonic() - started:.1f} s"):
        return 1
    client = Http(http_port)

    # 2. Metadata.
    status, raw = client.request("GET", f"/v2/models/{name}")
    meta = json.loads(raw) if status == 200 else {}
    say(f"GET /v2/models/{name} -> {status} {raw.decode(errors='replace')}")
    graph_outputs = [(o.name, ["batch" if not isinstance(d, int) else d for d in o.shape]) for o in reference.session.get_outputs()]
    check(
        status == 200 and meta.get("name") == name and version in (meta.get("versions") or []),
        f"metadata names {name} with versions {meta.get('versions')} (rulegate checks its version is listed)",
    )
    check(
        [i["name"] for i in meta.get("inputs", [])] == list(INPUTS)
        and all(i["datatype"] == "INT64" for i in meta.get("inputs", [])),
        "metadata inputs: input_ids, attention_mask, token_type_ids, INT64",
    )
    check(
        [o["name"] for o in meta.get("outputs", [])] == [n for n, _ in graph_outputs]
        and all(o["datatype"] == "FP32" for o in meta.get("outputs", [])),
        f"metadata outputs = graph outputs {graph_outputs}, FP32",
    )
    status, _ = client.request("GET", f"/v2/models/{name}/versions/{version}/ready")
    check(status == 200, f"GET /v2/models/{name}/versions/{version}/ready -> {status}")

    # 3. A 2-row padded batch over HTTP/JSON and gRPC, against in-process per-row results.
    rows = [by_id["benign_answer"], by_id["hard_refusal"]]
    batch = pad_batch(rows)
    want = reference.rows(rows)
    naive = reference.whole_batch(rows)
    say(
        f"2-row batch, lengths {[len(r['input_ids']) for r in rows]}, padded to {batch['input_ids'].shape[1]}; "
        f"for scale, one padded 2-row ONNX call differs from per-row by {max_diff(naive, want):.3f} (why rows run alone)"
    )
    infer_path = f"/v2/models/{name}/versions/{version}/infer"
    t = time.perf_counter()
    status, raw = client.request("POST", infer_path, http_body(batch))
    http_ms = (time.perf_counter() - t) * 1e3
    body = json.loads(raw) if status == 200 else {}
    if check(status == 200, f"POST {infer_path} -> {status} ({http_ms:.1f} ms)"):
        got = http_outputs(body)
        diff = max_diff(got, want)
        check(diff < TOLERANCE, f"HTTP/JSON outputs = in-process per-row outputs (max abs diff {diff:.2e})")
        check(list(got) == reference.outputs, f"HTTP outputs in graph order: {list(got)}")
        check(
            all(o["datatype"] == "FP32" and isinstance(o["data"], list) and not isinstance(o["data"][0], list) for o in body["outputs"]),
            "HTTP outputs: datatype FP32, flat row-major data",
        )
        for i, r in enumerate(rows if args.check_parity else []):
            d = max(abs(a - b) for a, b in zip(flat_numbers(heads(manifest, got, i)), flat_numbers(r["expected_onnx"])))
            check(d < PARITY_TOLERANCE, f"row {r['id']}: heads = parity.jsonl expected_onnx (max diff {d:.2e})")
        say("example HTTP infer response body (exactly as MLServer sent it):")
        print(raw.decode())
    else:
        say(f"body: {raw[:2000]!r}")

    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        live = stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        check(live, "gRPC ServerReady")
        gmeta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version), timeout=10)
        check(version in gmeta.versions, f"gRPC ModelMetadata versions {list(gmeta.versions)}")
        for raw_in, label in ((False, "contents.int64_contents (as rulegate sends)"), (True, "raw_input_contents")):
            response = stub.ModelInfer(grpc_request(name, version, batch, raw=raw_in), timeout=30)
            got, where = grpc_outputs(response)
            diff = max_diff(got, want)
            check(diff < TOLERANCE, f"gRPC, inputs in {label}: outputs in {where}, = in-process per-row (max abs diff {diff:.2e})")
            say(f"  gRPC outputs: " + ", ".join(f"{o.name} {o.datatype} {list(o.shape)}" for o in response.outputs))
    except grpc.RpcError as e:
        check(False, f"gRPC call failed: {e.code()} {e.details()}")

    # 4. Concurrent single-row requests of different lengths (adaptive batching would merge
    #    these), and one 8-row request.
    all_rows = list(by_id.values())
    want_all = reference.rows(all_rows)

    def one(i: int) -> tuple[int, float, str]:
        c = Http(http_port)
        s, b = c.request("POST", infer_path, http_body(pad_batch([all_rows[i]])))
        if s != 200:
            return s, float("inf"), b.decode(errors="replace")[:200]
        got = http_outputs(json.loads(b))
        return s, max_diff(got, {n: v[i : i + 1] for n, v in want_all.items()}), ""

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(all_rows)) as pool:
        results = list(pool.map(one, range(len(all_rows))))
    worst = max(d for _, d, _ in results)
    statuses = sorted({s for s, _, _ in results})
    errors = sorted({e for _, _, e in results if e})
    check(
        worst < TOLERANCE,
        f"{len(all_rows)} concurrent single-row requests, lengths {sorted(len(r['input_ids']) for r in all_rows)}: "
        f"statuses {statuses}, max abs diff {worst:.2e}" + (f", errors {errors[:2]}" if errors else ""),
    )
    status, raw = client.request("POST", infer_path, http_body(pad_batch(all_rows)))
    diff = max_diff(http_outputs(json.loads(raw)), want_all) if status == 200 else float("inf")
    check(diff < TOLERANCE, f"one {len(all_rows)}-row request padded to 384 (status {status}, max abs diff {diff:.2e})")

    # 5. Errors are client errors with a message.
    bad = http_body(batch)
    bad["inputs"] = bad["inputs"][:2]
    status, raw = client.request("POST", infer_path, bad)
    check(status == 400, f"missing token_type_ids -> {status} {raw.decode(errors='replace')[:160]}")
    status, raw = client.request("POST", f"/v2/models/{name}/versions/0000/infer", http_body(batch))
    check(status == 404, f"unknown version -> {status} {raw.decode(errors='replace')[:120]}")

    # 6. Latency: single-row requests, one at a time, warm.
    row = pad_batch([by_id["resources_dosage"]])
    seq = row["input_ids"].shape[1]
    http_payload = http_body(row)
    grpc_payload = grpc_request(name, version, row, raw=False)
    for _ in range(5):
        client.request("POST", infer_path, http_payload)
        stub.ModelInfer(grpc_payload, timeout=30)
        reference.session.run(None, row)

    # Interleaved (HTTP, gRPC, in-process, HTTP, ...), so that all three see the same load.
    calls = {
        "HTTP/JSON": lambda: client.request("POST", infer_path, http_payload),
        "gRPC": lambda: stub.ModelInfer(grpc_payload, timeout=30),
        "in-process ONNX Runtime": lambda: reference.session.run(None, row),
    }
    lat: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.requests):
        for label, fn in calls.items():
            t = time.perf_counter()
            fn()
            lat[label].append((time.perf_counter() - t) * 1e3)
    local = lat["in-process ONNX Runtime"]
    for label, values in lat.items():
        overhead = ""
        if label != "in-process ONNX Runtime":
            overhead = f", median overhead over in-process {statistics.median(v - l for v, l in zip(values, local)):.2f} ms"
        s = sorted(values)
        say(
            f"latency, {args.requests} single-row requests (seq {seq}), {label}: median {statistics.median(s):.2f} ms, "
            f"p90 {s[int(0.9 * (len(s) - 1))]:.2f} ms, min {s[0]:.2f} ms{overhead}"
        )

    # Throughput with 4 clients at once (rulegate's default number of remote sessions).
    def client_loop(n: int) -> None:
        c = Http(http_port)
        for _ in range(n):
            c.request("POST", infer_path, http_payload)

    per_client = max(1, args.requests // 2)
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(client_loop, [per_client] * 4))
    elapsed = time.perf_counter() - t
    say(f"throughput, 4 concurrent HTTP clients x {per_client} single-row requests: {4 * per_client / elapsed:.0f} requests/s")
    channel.close()
    return 0


if __name__ == "__main__":
    code = main()
    if failures:
        say(f"{len(failures)} check(s) failed:")
        for f in failures:
            say(f"  - {f}")
        sys.exit(1)
    say("all checks passed")
    sys.exit(code)
