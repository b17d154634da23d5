"""Triton over gRPC: one batched inference call per scoring batch, sync (Kafka) and async (HTTP).

The request tensors are exactly the plan's (``schemas.plan.ServingPlan.tensors``), already stacked
with :func:`schemas.tensors.stack_requests`; the model answers ``score`` FP32 ``[B, 1]`` and
``cold_start`` INT8 ``[B, K]`` (K = number of embedding keys, 1 = no admissible embedding).

Errors are split into two kinds because callers react differently:
:class:`TritonUnavailable` (server down, model not loaded, deadline) -> HTTP 503 / Kafka pause and
retry; :class:`TritonRequestError` (the server rejected the tensors) -> HTTP 400 / dead letter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from schemas.plan import ServingPlan

SCORE_OUTPUT = "score"
COLD_START_OUTPUT = "cold_start"
OUTPUTS = (SCORE_OUTPUT, COLD_START_OUTPUT)

# gRPC status codes that mean "not now" rather than "never with these tensors".
_UNAVAILABLE_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND", "CANCELLED", "UNKNOWN",
                      "RESOURCE_EXHAUSTED", "ABORTED"}


# Reconnect quickly after a Triton restart (gRPC's default backoff grows to minutes); passing
# channel_args replaces tritonclient's defaults, so the message size limits are repeated here.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonUnavailable(RuntimeError):
    """Triton cannot answer now (down, model not ready, timeout). Retry later; never drop."""


class TritonRequestError(ValueError):
    """Triton rejected the request itself (shape, dtype, tensor name)."""


@dataclass(frozen=True)
class ModelOutput:
    scores: np.ndarray  # float32 [B]
    cold_start: np.ndarray  # int8 [B, K]
    model_name: str
    model_version: str

    # Row accessors: a routed batch (relstream.model_routing) can mix model versions.
    def version_at(self, i: int) -> str:
        return self.model_version

    def name_at(self, i: int) -> str:
        return self.model_name


def _status_name(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    raw = str(status() if callable(status) else status or "")
    return raw.rsplit(".", 1)[-1].upper()


def classify(exc: Exception) -> Exception:
    """Map a tritonclient / gRPC exception to TritonUnavailable or TritonRequestError."""
    name = _status_name(exc)
    msg = str(exc)
    if name == "INVALID_ARGUMENT" or (not name and "unexpected" in msg.lower()):
        return TritonRequestError(f"Triton rejected the request: {msg}")
    if name in _UNAVAILABLE_CODES or not name:
        return TritonUnavailable(f"Triton unavailable ({name or type(exc).__name__}): {msg}")
    return TritonRequestError(f"Triton error {name}: {msg}")


def make_inputs(plan: ServingPlan, tensors: Mapping[str, np.ndarray], module) -> list:
    """InferInputs (of ``module``: tritonclient.grpc or its aio twin) in plan order."""
    inputs = []
    for spec in plan.tensors:
        arr = tensors[spec.name]
        if spec.numpy_dtype != "object" and arr.dtype != np.dtype(spec.numpy_dtype):
            arr = arr.astype(spec.numpy_dtype)
        inp = module.InferInput(spec.name, list(arr.shape), spec.triton_dtype)
        inp.set_data_from_numpy(np.ascontiguousarray(arr) if arr.dtype != object else arr)
        inputs.append(inp)
    return inputs


def parse_result(result, model_name: str, batch: int) -> ModelOutput:
    scores = result.as_numpy(SCORE_OUTPUT)
    cold = result.as_numpy(COLD_START_OUTPUT)
    if scores is None or cold is None:
        raise TritonRequestError(f"model {model_name!r} must return outputs {list(OUTPUTS)}")
    scores = np.asarray(scores, dtype=np.float32).reshape(batch, -1)[:, 0]
    cold = np.asarray(cold).reshape(batch, -1).astype(np.int8)
    version = result.get_response().model_version
    return ModelOutput(scores=scores, cold_start=cold, model_name=model_name, model_version=str(version))


def _batch_of(tensors: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(tensors.values())).shape[0])


class TritonScorer:
    """Blocking gRPC client for the Kafka path."""

    def __init__(self, plan: ServingPlan, url: str, model_name: str = "relstream",
                 model_version: str = "", timeout_s: float = 10.0, *, outputs=OUTPUTS, parse=None):
        """``outputs`` / ``parse``: the outputs to request and how to read them (default: a
        scoring model's score + cold_start; ranking plans pass their own, scorer/recommend.py)."""
        import tritonclient.grpc as grpcclient
        self._mod = grpcclient
        self.plan = plan
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._outputs = [grpcclient.InferRequestedOutput(n) for n in outputs]
        self._parse = parse or parse_result

    def infer(self, tensors: Mapping[str, np.ndarray]) -> ModelOutput:
        from tritonclient.utils import InferenceServerException
        inputs = make_inputs(self.plan, tensors, self._mod)
        try:
            result = self._client.infer(self.model_name, inputs, model_version=self.model_version,
                                        outputs=self._outputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise classify(exc) from None
        return self._parse(result, self.model_name, _batch_of(tensors))

    def ready(self) -> tuple[bool, str]:
        from tritonclient.utils import InferenceServerException
        try:
            if not self._client.is_server_ready(client_timeout=2):
                return False, "Triton server not ready"
            if not self._client.is_model_ready(self.model_name, self.model_version, client_timeout=2):
                return False, f"model {self.model_name!r} not loaded"
        except InferenceServerException as exc:
            return False, f"Triton unreachable: {exc}"
        return True, "ok"

    def max_batch_size(self) -> int:
        cfg = self._client.get_model_config(self.model_name, self.model_version, as_json=True)
        return int(cfg.get("config", cfg).get("max_batch_size", 0)) or 1

    def close(self) -> None:
        self._client.close()


class AsyncTritonScorer:
    """asyncio gRPC client for the HTTP path (one call per micro-batch)."""

    def __init__(self, plan: ServingPlan, url: str, model_name: str = "relstream",
                 model_version: str = "", timeout_s: float = 10.0, *, outputs=OUTPUTS, parse=None):
        """``outputs`` / ``parse``: as for :class:`TritonScorer`."""
        import tritonclient.grpc.aio as aioclient
        self._mod = aioclient
        self.plan = plan
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        self._client = None  # created inside the serving event loop (gRPC aio binds to it)
        self._outputs = [aioclient.InferRequestedOutput(n) for n in outputs]
        self._parse = parse or parse_result

    @property
    def client(self):
        if self._client is None:
            self._client = self._mod.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        return self._client

    async def infer(self, tensors: Mapping[str, np.ndarray]) -> ModelOutput:
        from tritonclient.utils import InferenceServerException
        inputs = make_inputs(self.plan, tensors, self._mod)
        try:
            result = await self.client.infer(self.model_name, inputs, model_version=self.model_version,
                                              outputs=self._outputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise classify(exc) from None
        return self._parse(result, self.model_name, _batch_of(tensors))

    async def ready(self) -> tuple[bool, str]:
        from tritonclient.utils import InferenceServerException
        try:
            if not await self.client.is_server_ready(client_timeout=2):
                return False, "Triton server not ready"
            if not await self.client.is_model_ready(self.model_name, self.model_version, client_timeout=2):
                return False, f"model {self.model_name!r} not loaded"
        except InferenceServerException as exc:
            return False, f"Triton unreachable: {exc}"
        return True, "ok"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
