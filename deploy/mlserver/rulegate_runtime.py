"""MLServer runtime for a rulegate model directory (model.onnx + manifest.json).

rulegate's remote classifier backend tokenizes and packs (prompt, completion) pairs itself and
sends the graph's three INT64 inputs, ``input_ids``, ``attention_mask`` and ``token_type_ids``,
shape ``[batch, seq]``, over the Open Inference Protocol (KServe v2, HTTP/JSON or gRPC). This
runtime runs ``model.onnx`` on them with ONNX Runtime (CPU) and answers every graph output
(``proposition_logits [batch, 23]``, ``response_type_logits [batch, 4]``, ``prm_logit
[batch, 1]`` for the shipped model) as FP32 under its graph name.

Row-exactness. A graph quantised with onnxruntime's ``quantize_dynamic`` (manifest
``"quantization": "dynamic"``) derives its activation scales from each input tensor, so a
row's result depends on the rows batched with it and on trailing padding. rulegate runs such
graphs one row at a time, unpadded (docs/model-contract.md); so that a remote result equals
the in-process one row by row, this runtime then runs each row of a request on its own, with
its trailing padding (``attention_mask`` 0 at the end) cut off. Graphs that are not dynamic
run the whole request in one call (trailing all-padding columns cut off, which changes
nothing but the work).

Parameters (``parameters.extra`` in model-settings.json; an environment variable, where
named, wins over the file):

- ``intra_op_threads`` (``RULEGATE_ORT_THREADS``): ONNX Runtime intra-op threads, default 1.
- ``inference_threads`` (``RULEGATE_INFERENCE_THREADS``): threads that run sessions
  concurrently, so that a slow call does not hold up the server's event loop; default 1.
- ``per_row``: ``"auto"`` (default: per row when the manifest says ``dynamic``), ``true``
  or ``false``.
- ``trim_padding``: cut each row's trailing padding before running it; default ``true``.
  ``false`` runs rows exactly as sent (a padded row of a dynamic graph then scores
  differently from the same row unpadded, by up to ~0.5 in logit on the shipped model).
- ``RULEGATE_MODEL_DIR`` (environment only): a model directory that replaces
  ``parameters.uri``, to serve another export without editing model-settings.json (its
  manifest's version must still equal the settings' ``version``).

Requests: the three inputs by name (any order; other integer datatypes are cast to int64),
as JSON ``data`` (flat row-major or nested) or gRPC ``contents`` / ``raw_input_contents``
(MLServer's codecs decode all of them). ``outputs`` in a request restricts the answer to
those outputs; without it every graph output comes back, in graph order.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail, InvalidArgument as OrtInvalidArgument

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.logging import logger
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ResponseOutput,
)
from mlserver.utils import get_model_uri

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

_ORT_TO_V2 = {
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
}


class ModelLoadError(MLServerError):
    def __init__(self, msg: str):
        super().__init__(msg, status_code=500)


def _flag(value, name: str) -> Optional[bool]:
    """`true`/`false` (bools or strings); None for "auto"."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", ""):
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ModelLoadError(f"parameter {name}: expected true, false or auto, got {value!r}")


def _positive_int(value, name: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ModelLoadError(f"parameter {name}: expected a positive integer, got {value!r}")
    return n


def _real_length(mask_row: np.ndarray) -> int:
    """Length of a row without its trailing padding (attention_mask 0); at least 1."""
    nonzero = np.flatnonzero(mask_row)
    return int(nonzero[-1]) + 1 if nonzero.size else max(1, mask_row.shape[0])


class OnnxEncoderRuntime(MLModel):
    """Runs a rulegate encoder graph; see the module docstring."""

    async def load(self) -> bool:
        extra = dict((self.settings.parameters.extra or {}) if self.settings.parameters else {})

        model_path = os.environ.get("RULEGATE_MODEL_DIR") or await get_model_uri(
            self.settings, wellknown_filenames=["model.onnx"]
        )
        if os.path.isdir(model_path):
            model_path = os.path.join(model_path, "model.onnx")
        if not os.path.isfile(model_path):
            raise ModelLoadError(f"{self.name}: no model.onnx at {model_path}")
        model_dir = os.path.dirname(os.path.abspath(model_path))

        manifest: Dict = {}
        manifest_path = os.path.join(model_dir, "manifest.json")
        if os.path.isfile(manifest_path):
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        manifest_version = manifest.get("version")
        if manifest_version is not None and self.version and self.version != manifest_version:
            raise ModelLoadError(
                f"{self.name}: model-settings.json says version {self.version!r} but "
                f"{manifest_path} says {manifest_version!r}; set the settings' version to the "
                "manifest's (rulegate names the version it expects)"
            )

        if self.version and not self.settings.versions:
            # MLServer's metadata lists `versions` (a separate field), not parameters.version;
            # rulegate reads the list to pick or check its version.
            self.settings.versions = [self.version]

        intra = _positive_int(
            os.environ.get("RULEGATE_ORT_THREADS", extra.get("intra_op_threads", 1)), "intra_op_threads"
        )
        workers = _positive_int(
            os.environ.get("RULEGATE_INFERENCE_THREADS", extra.get("inference_threads", 1)),
            "inference_threads",
        )
        per_row = _flag(extra.get("per_row", "auto"), "per_row")
        quantization = manifest.get("quantization", "none")
        self._per_row = (quantization == "dynamic") if per_row is None else per_row
        trim = _flag(extra.get("trim_padding", True), "trim_padding")
        self._trim = True if trim is None else trim

        # The same session options as rulegate's in-process backend (src/classifier/mod.rs).
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )

        graph_inputs = {i.name: i for i in self._session.get_inputs()}
        missing = [n for n in INPUT_NAMES if n not in graph_inputs]
        if missing or len(graph_inputs) != len(INPUT_NAMES):
            raise ModelLoadError(
                f"{self.name}: {model_path} has inputs {sorted(graph_inputs)}; expected {list(INPUT_NAMES)}"
            )
        self._output_names: List[str] = [o.name for o in self._session.get_outputs()]
        for o in self._session.get_outputs():
            if o.type != "tensor(float)" or len(o.shape) < 1:
                raise ModelLoadError(f"{self.name}: output {o.name} is {o.type} {o.shape}; expected float [batch, ...]")

        def dims(shape) -> List[int]:
            return [d if isinstance(d, int) else -1 for d in shape]

        self.inputs = [
            MetadataTensor(name=n, datatype=_ORT_TO_V2.get(graph_inputs[n].type, "INT64"), shape=dims(graph_inputs[n].shape))
            for n in INPUT_NAMES
        ]
        self.outputs = [
            MetadataTensor(name=o.name, datatype="FP32", shape=dims(o.shape)) for o in self._session.get_outputs()
        ]
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rulegate-ort")
        logger.info(
            "%s %s: %s (quantization %s) on CPU: %s, trailing padding %s, %d intra-op thread(s), %d inference thread(s)",
            self.name,
            self.version or "(unversioned)",
            model_path,
            quantization,
            "one row per run" if self._per_row else "whole batch per run",
            "trimmed" if self._trim else "kept",
            intra,
            workers,
        )
        return True

    async def unload(self) -> bool:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True)
        return True

    def _decode(self, payload: InferenceRequest) -> Dict[str, np.ndarray]:
        by_name = {i.name: i for i in payload.inputs}
        missing = [n for n in INPUT_NAMES if n not in by_name]
        if missing:
            raise InferenceError(f"missing input(s) {missing}; expected {list(INPUT_NAMES)}")
        unknown = sorted(set(by_name) - set(INPUT_NAMES))
        if unknown:
            raise InferenceError(f"unknown input(s) {unknown}; expected {list(INPUT_NAMES)}")
        feed: Dict[str, np.ndarray] = {}
        for name in INPUT_NAMES:
            request_input = by_name[name]
            if not request_input.datatype.startswith(("INT", "UINT")):
                raise InferenceError(f"input {name} is {request_input.datatype}; expected INT64")
            try:
                array = NumpyCodec.decode_input(request_input)
            except ValueError as e:
                raise InferenceError(f"input {name}: data does not fit shape {request_input.shape}: {e}") from e
            if array.ndim != 2:
                raise InferenceError(f"input {name} has shape {list(array.shape)}; expected [batch, seq]")
            feed[name] = np.ascontiguousarray(array, dtype=np.int64)
        shapes = {n: a.shape for n, a in feed.items()}
        if len(set(shapes.values())) != 1:
            raise InferenceError(f"inputs differ in shape: {shapes}")
        if feed["input_ids"].shape[0] == 0 or feed["input_ids"].shape[1] == 0:
            raise InferenceError(f"empty input, shape {list(feed['input_ids'].shape)}")
        return feed

    def _run(self, feed: Dict[str, np.ndarray], names: List[str]) -> List[np.ndarray]:
        mask = feed["attention_mask"]
        batch = mask.shape[0]
        if not self._per_row:
            if self._trim:
                seq = max(_real_length(mask[i]) for i in range(batch))
                feed = {n: a[:, :seq] for n, a in feed.items()}
            return [np.asarray(x, dtype=np.float32) for x in self._session.run(names, feed)]
        parts: List[List[np.ndarray]] = [[] for _ in names]
        for i in range(batch):
            seq = _real_length(mask[i]) if self._trim else mask.shape[1]
            row = {n: a[i : i + 1, :seq] for n, a in feed.items()}
            for k, value in enumerate(self._session.run(names, row)):
                parts[k].append(value)
        return [np.concatenate(p, axis=0).astype(np.float32, copy=False) for p in parts]

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = self._decode(payload)
        names = self._output_names
        if payload.outputs:
            names = [o.name for o in payload.outputs]
            unknown = [n for n in names if n not in self._output_names]
            if unknown:
                raise InferenceError(f"unknown output(s) {unknown}; the model has {self._output_names}")
        loop = asyncio.get_running_loop()
        try:
            values = await loop.run_in_executor(self._executor, self._run, feed, names)
        except (OrtFail, OrtInvalidArgument) as e:
            raise InferenceError(f"onnxruntime: {e}") from e
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[self._encode(name, value) for name, value in zip(names, values)],
        )

    @staticmethod
    def _encode(name: str, value: np.ndarray) -> ResponseOutput:
        output = NumpyCodec.encode_output(name, value)
        # The content-type hint ("np") is MLServer-specific; plain v2 clients do not need it.
        output.parameters = None
        return output
