"""Triton's model control over gRPC (explicit mode): load, unload, readiness, config, one inference.
Failures are :class:`ModelOpsError`."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from relstream import lifecycle as lc
from schemas.plan import ServingPlan
from scorer.triton import make_inputs

from .model_bundles import DeployRefused, ModelOpsError

class TritonControl:
    """The few Triton calls the control plane makes, all over gRPC.

    gRPC, not HTTP: a model load over HTTP was measured to stall HTTP inference requests to
    *other*, already-loaded models for the whole load (5.8-9.7 s with the distilled model; gRPC
    clients were not affected), while the same load over gRPC left HTTP clients at p99 1.3-2.8x
    their baseline with zero errors (bench/bench_canary_rollout.py).
    """

    def __init__(self, grpc_url: str, timeout_s: float = 180.0):
        import tritonclient.grpc as tg

        self._tg = tg
        self.url = grpc_url.split("://", 1)[-1]
        self._timeout_s = timeout_s
        self._client = tg.InferenceServerClient(self.url)

    def close(self) -> None:
        self._client.close()

    def load(self, name: str) -> None:
        from tritonclient.utils import InferenceServerException
        try:
            self._client.load_model(name, client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise ModelOpsError(f"Triton could not load {name!r}: {exc.message()}") from None

    def unload(self, name: str) -> None:
        self._client.unload_model(name)

    def ready_versions(self, model: str) -> dict[int, str]:
        """{version: state} of the per-version Triton models of ``model``."""
        out = {}
        for entry in self._client.get_model_repository_index(as_json=True).get("models", []):
            version = lc.parse_triton_model_name(entry.get("name", ""), model)
            if version is not None and entry.get("state"):
                out[version] = entry["state"]
        return out

    def config(self, name: str) -> dict | None:
        """Triton's JSON model config of a loaded model; None when it is not ready."""
        from tritonclient.utils import InferenceServerException
        try:
            if not self._client.is_model_ready(name):
                return None
            return self._client.get_model_config(name, as_json=True).get("config")
        except InferenceServerException:
            return None

    def infer(self, plan: ServingPlan, model: str, version: int, tensors: Mapping[str, np.ndarray]):
        """Score one request on ``version``; returns ({output: array}, version that answered)."""
        from tritonclient.utils import InferenceServerException
        tg = self._tg
        inputs = make_inputs(plan, {k: np.asarray(v) for k, v in tensors.items()}, tg)
        try:
            res = self._client.infer(lc.triton_model_name(model, version), inputs, model_version=str(version),
                                     client_timeout=30)
        except InferenceServerException as exc:
            raise DeployRefused("smoke-inference", f"version {version}: {exc.message()}") from None
        body = res.get_response(as_json=True)
        outs = {o["name"]: res.as_numpy(o["name"]) for o in body.get("outputs", ())}
        return outs, str(body.get("model_version", ""))

    def stats(self, model: str, versions: Iterable[int]) -> dict[int, dict]:
        """Per-version counters from Triton's statistics API (loaded versions only)."""
        from tritonclient.utils import InferenceServerException
        out = {}
        for version in versions:
            try:
                raw = self._client.get_inference_statistics(lc.triton_model_name(model, version), as_json=True)
            except InferenceServerException:
                continue
            for s in raw.get("model_stats", ()):
                inf = s.get("inference_stats", {})
                ok = inf.get("success", {})
                n_ok = int(ok.get("count", 0))
                queue = inf.get("queue", {})
                out[version] = {
                    "success": n_ok,
                    "fail": int(inf.get("fail", {}).get("count", 0)),
                    "avg_request_ms": int(ok.get("ns", 0)) / n_ok / 1e6 if n_ok else None,
                    "avg_queue_ms": int(queue.get("ns", 0)) / max(int(queue.get("count", 0)), 1) / 1e6,
                    "inferences": int(s.get("inference_count", 0)),
                    "executions": int(s.get("execution_count", 0)),
                    "batch_sizes": {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
                                    for b in s.get("batch_stats", ())},
                }
        return out
