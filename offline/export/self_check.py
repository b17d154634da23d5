"""The export's self-check on a real Triton, for either plan kind.

:func:`check_export` loads a version through explicit model control, sends seed-shaped JSON over
HTTP (curl) and the same tensors over gRPC, and compares every output of the plan with the
in-process answer of the same bundle code (:func:`offline.export.bundle.split_scores`; scores
within 1e-5, flags equal, padded candidates ``-inf`` on both sides). It also sends one multi-row
request (batch dim > 1, as the scorer sends micro-batches) and checks the error paths: a missing
tensor and a wrong datatype must fail naming the tensor, and so must a ranking request without
candidates.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from offline.export.bundle import Bundle, load_bundle, split_scores
from offline.export.model_repository import ExportError, synthetic_requests
from schemas.plan import ServingPlan
from schemas.tensors import stack_requests, to_triton_json

TOLERANCE = 1e-5


def _curl_infer(http_url: str, model_name: str, body: dict, version: int | None = None) -> tuple[int, dict]:
    path = f"/v2/models/{model_name}" + (f"/versions/{version}" if version else "") + "/infer"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(body, f)
        payload = f.name
    try:
        proc = subprocess.run(["curl", "-sS", "-X", "POST", f"{http_url}{path}", "-H", "Content-Type: application/json",
                               "-d", f"@{payload}", "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=60)
    finally:
        Path(payload).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise ExportError(f"curl failed ({proc.returncode}): {proc.stderr.strip()}")
    text, _, code = proc.stdout.rpartition("\n")
    return int(code), json.loads(text) if text.strip() else {}


def grpc_inputs(plan: ServingPlan, tensors: dict) -> list:
    """The plan's tensors as gRPC inputs."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for spec in plan.tensors:
        arr = np.asarray(tensors[spec.name])
        inp = grpcclient.InferInput(spec.name, list(arr.shape), spec.triton_dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def grpc_infer_outputs(grpc_url: str, model_name: str, plan: ServingPlan, tensors: dict,
                       version: int | None = None) -> dict[str, np.ndarray]:
    """One gRPC inference with the plan's tensors; every output the plan names, by name."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        outputs = [grpcclient.InferRequestedOutput(o.name) for o in plan.outputs]
        res = client.infer(model_name, grpc_inputs(plan, tensors), outputs=outputs, model_version=str(version or ""))
        return {o.name: res.as_numpy(o.name) for o in plan.outputs}
    finally:
        client.close()


def load_in_triton(http_url: str, model_name: str, timeout_s: float = 120.0) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url.replace("http://", ""), network_timeout=timeout_s)
    try:
        client.load_model(model_name)
        if not client.is_model_ready(model_name):
            raise ExportError(f"Triton reports model {model_name!r} not ready after load")
    finally:
        client.close()


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| where infinities must match exactly (padded candidates)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    fin = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)) or not np.array_equal(a[~fin], b[~fin]):
        return float("inf")
    return float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0


def check_export(version_dir: str | Path, http_url: str, grpc_url: str, requests: Sequence[dict] | None = None,
                 load: bool = True, tolerance: float = TOLERANCE, latency_requests: int = 0,
                 latency_candidates: int = 100) -> dict:
    """Compare Triton's answers (HTTP via curl, gRPC) with the in-process answers; raise on mismatch.

    ``latency_requests`` > 0 also times sequential requests in-process and through Triton gRPC
    (ranking: one request of ``latency_candidates`` catalog candidates, the longest history)."""
    version_dir = Path(version_dir)
    model_name, version = version_dir.parent.name, int(version_dir.name)
    bundle = load_bundle(version_dir)
    plan = bundle.plan
    requests = list(requests or synthetic_requests(plan))
    if load:
        load_in_triton(http_url, model_name)
    expected = split_scores(bundle, requests)
    report: dict[str, Any] = {"model": model_name, "version": version, "requests": len(requests),
                              "max_abs_diff_http": 0.0, "max_abs_diff_grpc": 0.0}
    if plan.is_ranking:
        report["candidates"] = [int(np.shape(r[plan.candidate_tensor])[1]) for r in requests]
    for req, want in zip(requests, expected):
        code, body = _curl_infer(http_url, model_name, to_triton_json(plan, req), version)
        if code != 200:
            raise ExportError(f"HTTP {code} from Triton: {body}")
        outs = {o["name"]: o for o in body["outputs"]}
        http = {name: np.asarray(o["data"]).reshape(o["shape"]) for name, o in outs.items()}
        grpc = grpc_infer_outputs(grpc_url, model_name, plan, req, version)
        report["max_abs_diff_http"] = max(report["max_abs_diff_http"], _diff(http["score"], want["score"]))
        report["max_abs_diff_grpc"] = max(report["max_abs_diff_grpc"], _diff(grpc["score"], want["score"]))
        for out in plan.outputs:
            if out.name != "score" and not (np.array_equal(http[out.name], want[out.name])
                                             and np.array_equal(grpc[out.name], want[out.name])):
                raise ExportError(f"{out.name} differs: offline {want[out.name].tolist()}, http "
                                  f"{http[out.name].tolist()}, grpc {grpc[out.name].tolist()}")
    # One request carrying several rows (batch dim > 1, padded), as the scorer sends.
    multi = stack_requests(plan, requests)
    (multi_expected,) = split_scores(bundle, [multi])
    multi_grpc = grpc_infer_outputs(grpc_url, model_name, plan, multi, version)
    single = np.full(multi_expected["score"].shape, -np.inf, np.float32)
    for i, want in enumerate(expected):
        single[i, :want["score"].shape[1]] = want["score"][0]
    report["max_abs_diff_multi_row"] = max(_diff(multi_grpc["score"], single), _diff(multi_expected["score"], single))
    if plan.is_ranking:
        report["padded_candidates_minus_inf"] = bool(np.isneginf(multi_grpc["score"][single == -np.inf]).all())
    report["empty_history_requests"] = sum(
        1 for r in requests if any(np.asarray(r[s.name]).shape[1] == 0 for s in plan.tensors if s.kind == "rti"))
    worst = max(report["max_abs_diff_http"], report["max_abs_diff_grpc"], report["max_abs_diff_multi_row"])
    if worst > tolerance or not report.get("padded_candidates_minus_inf", True):
        raise ExportError(f"Triton score differs from the offline score by more than {tolerance}: {report}")
    report["error_paths"] = check_error_paths(plan, http_url, model_name, version, requests[0])
    if plan.is_ranking:
        report["error_paths"]["no_candidates"] = _check_no_candidates(plan, http_url, model_name, version,
                                                                       requests[0])
    if latency_requests:
        report["latency"] = latency(bundle, grpc_url, model_name, requests, latency_requests, latency_candidates)
    report["ok"] = True
    return report


def latency_request(bundle, requests: Sequence[dict], n_candidates: int) -> dict:
    """Ranking: the request with the longest history, re-pointed at the catalog's top ``n_candidates``."""
    plan = bundle.plan
    hop = plan.hops[0]
    longest = max(requests, key=lambda r: np.shape(r[f"{hop.key.key}:{hop.columns[0]}"])[1])
    cands = bundle.top_catalog(n_candidates)
    if len(cands) < n_candidates:
        raise ExportError(f"catalog: {len(cands)} products, fewer than the {n_candidates} latency candidates")
    return dict(longest, **{plan.candidate_tensor: cands.astype(np.int64).reshape(1, -1, 1)})


def _percentiles(ms: list[float]) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(ms)}


def latency(bundle: Bundle, grpc_url: str, model_name: str, requests: Sequence[dict], n: int,
            n_candidates: int = 100) -> dict:
    """Sequential latency of single requests (after warm-up): in-process (wall and this process's
    CPU per request, torch threads as set) and through Triton gRPC (client wall). Scoring plans
    cycle through ``requests``; ranking plans send one request of ``n_candidates`` catalog
    candidates."""
    import tritonclient.grpc as grpcclient

    plan = bundle.plan
    sent = [latency_request(bundle, requests, n_candidates)] if plan.is_ranking else list(requests)
    wall, cpu = [], []
    for i in range(n + 5):
        t0, c0 = time.perf_counter(), time.process_time()
        split_scores(bundle, [sent[i % len(sent)]])
        if i >= 5:
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        prepared = [grpc_inputs(plan, req) for req in sent]
        triton = []
        for i in range(n + 5):
            t0 = time.perf_counter()
            client.infer(model_name, prepared[i % len(prepared)])
            if i >= 5:
                triton.append((time.perf_counter() - t0) * 1e3)
    finally:
        client.close()
    out = {"in_process_ms": _percentiles(wall), "in_process_cpu_ms": _percentiles(cpu),
           "triton_grpc_ms": _percentiles(triton), "torch_threads": torch.get_num_threads()}
    if plan.is_ranking:
        hop = plan.hops[0]
        out.update(candidates=n_candidates, history=int(np.shape(sent[0][f"{hop.key.key}:{hop.columns[0]}"])[1]))
    return out


def check_error_paths(plan: ServingPlan, http_url: str, model_name: str, version: int, request: dict) -> dict:
    """A request without a tensor and one with a wrong datatype must fail naming the tensor."""
    body = to_triton_json(plan, request)
    out = {}
    victim = body["inputs"][-1]["name"]
    missing = {"inputs": body["inputs"][:-1]}
    code, resp = _curl_infer(http_url, model_name, missing, version)
    if code == 200 or victim not in json.dumps(resp):
        raise ExportError(f"missing tensor {victim!r} was not rejected by name: HTTP {code} {resp}")
    out["missing_tensor"] = {"http": code, "error": resp.get("error")}
    wrong = json.loads(json.dumps(body))
    target = next(i for i in wrong["inputs"] if i["datatype"] == "INT64")
    target["datatype"] = "FP32"
    target["data"] = [float(x) for x in target["data"]]
    code, resp = _curl_infer(http_url, model_name, wrong, version)
    if code == 200 or target["name"] not in json.dumps(resp):
        raise ExportError(f"wrong dtype on {target['name']!r} was not rejected by name: HTTP {code} {resp}")
    out["wrong_dtype"] = {"http": code, "error": resp.get("error")}
    return out


def _check_no_candidates(plan: ServingPlan, http_url: str, model_name: str, version: int, request: dict) -> dict:
    body = to_triton_json(plan, request)
    item = next(i for i in body["inputs"] if i["name"] == plan.candidate_tensor)
    item["shape"], item["data"] = [1, 0, 1], []
    code, resp = _curl_infer(http_url, model_name, body, version)
    if code == 200 or plan.candidate_tensor not in json.dumps(resp):
        raise ExportError(f"a request without candidates was not rejected by name: HTTP {code} {resp}")
    return {"http": code, "error": resp.get("error")}


__all__ = ["TOLERANCE", "check_error_paths", "check_export", "grpc_infer_outputs", "latency", "load_in_triton"]
