"""Export the distilled model as a Triton model repository, and check the export on a real Triton.

Layout written by :func:`export_model` (one new version directory per export)::

    <repo>/<model_name>/config.pbtxt           inputs = the plan's tensors, Python backend
    <repo>/<model_name>/<N>/model.py           offline/triton_model/model.py
    <repo>/<model_name>/<N>/model.pt           state dict + hyper-parameters (torch.load weights_only)
    <repo>/<model_name>/<N>/embeddings.parquet the deep model's entity embeddings
    <repo>/<model_name>/<N>/plan.yaml          the serving plan
    <repo>/<model_name>/<N>/manifest.json      data range, metrics, git commit, plan fingerprint
    <repo>/<model_name>/<N>/vendor/            schemas/ + offline/{embeddings,shallow_model,bundle}.py

:func:`check_export` loads the model through explicit model control, sends seed-shaped JSON over
HTTP (curl) and the same tensors over gRPC, and compares the answers with the in-process score of
the same bundle code (abs diff <= 1e-5). It also checks the error paths (missing tensor, wrong
dtype) and an empty history (``[1, 0, 1]``).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from offline.bundle import EMBEDDINGS_FILE, MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE, load_bundle, split_scores
from offline.embeddings import EmbeddingTable, write_embeddings_parquet
from offline.shallow_model import ShallowConfig, ShallowModel, build_model
from schemas.plan import ServingPlan
from schemas.tensors import stack_requests, to_triton_json
from schemas.files import file_sha256 as _sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = Path(__file__).parent / "triton_model"
DEFAULT_MODEL_NAME = "relstream"
# Code the bundle needs, copied verbatim (paths relative to the repository root).
VENDORED = ("schemas/plan.py", "schemas/tensors.py", "offline/embeddings.py", "offline/shallow_model.py",
            "offline/bundle.py")
TOLERANCE = 1e-5


class ExportError(RuntimeError):
    pass


# ----- config.pbtxt ------------------------------------------------------------------------

def config_type(triton_dtype: str) -> str:
    """config.pbtxt spelling of a wire datatype: BYTES is ``TYPE_STRING`` there."""
    return "TYPE_STRING" if triton_dtype == "BYTES" else f"TYPE_{triton_dtype}"


def render_config(plan: ServingPlan, model_name: str = DEFAULT_MODEL_NAME, max_batch_size: int = 256,
                  instance_count: int = 1, torch_threads: int = 1) -> str:
    inputs = []
    for spec in plan.tensors:
        dims = ", ".join(str(d) for d in spec.dims)
        ragged = "\n    allow_ragged_batch: true" if spec.ragged else ""
        inputs.append(f'  {{\n    name: "{spec.name}"\n    data_type: {config_type(spec.triton_dtype)}\n'
                      f'    dims: [ {dims} ]{ragged}\n  }}')
    # score [1] (or [n_candidates]); cold_start: one flag per embedding key, 1 = no admissible embedding
    outputs = [f'  {{\n    name: "{o.name}"\n    data_type: {config_type(o.triton_dtype)}\n'
               f'    dims: [ {", ".join(str(d) for d in o.dims)} ]\n  }}' for o in plan.outputs]
    template = (TEMPLATE_DIR / "config.template.pbtxt").read_text()
    return template.format(plan_name=plan.name, fingerprint=plan.fingerprint(), model_name=model_name,
                           max_batch_size=max_batch_size, inputs=",\n".join(inputs), outputs=",\n".join(outputs),
                           instance_count=instance_count, torch_threads=torch_threads)


# ----- export ------------------------------------------------------------------------------

def git_commit(root: Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "offline", "schemas"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.exists() else []
    return max(versions, default=0) + 1




def vendor_code(dst: Path) -> None:
    for rel in VENDORED:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    for pkg in ("schemas", "offline"):  # bare packages: only the vendored modules, no side imports
        (dst / pkg / "__init__.py").write_text('"""Vendored by relstream offline export."""\n')


def export_model(plan: ServingPlan, repo: str | Path, model: ShallowModel, embeddings: str | Path, *,
                 model_name: str = DEFAULT_MODEL_NAME, manifest: dict | None = None, max_batch_size: int = 256,
                 instance_count: int = 1, torch_threads: int = 1, now: Callable[[], float] = time.time,
                 embeddings_last_days: float | None = None) -> Path:
    """Write a new version of ``model_name`` into the repository; returns the version directory.

    ``embeddings_last_days`` keeps only the snapshots of the last N days (counted back from the
    newest snapshot) in the bundle: serving needs no more than ``max_embedding_offset``.
    """
    repo = Path(repo)
    model_dir = repo / model_name
    embeddings = Path(embeddings)
    table = EmbeddingTable.from_parquet(embeddings, plan)  # validates the file before anything is written
    if table.dim != model.emb_dim:
        raise ExportError(f"embeddings: dim {table.dim} != model emb_dim {model.emb_dim}")
    version = next_version(model_dir)
    final = model_dir / str(version)
    model_dir.mkdir(parents=True, exist_ok=True)
    # Build in a hidden sibling and rename: Triton never sees a half-written version.
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        shutil.copy2(TEMPLATE_DIR / "model.py", staging / "model.py")
        vendor_code(staging / "vendor")
        state = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "config": model.config.to_dict(), "emb_dim": int(model.emb_dim)}
        torch.save(state, staging / WEIGHTS_FILE)
        if embeddings_last_days is None:
            shutil.copy2(embeddings, staging / EMBEDDINGS_FILE)
        else:
            trim_embeddings(embeddings, staging / EMBEDDINGS_FILE, embeddings_last_days)
        (staging / PLAN_FILE).write_text(plan.to_yaml())
        info = {
            "model_name": model_name,
            "version": version,
            "created_at": _dt.datetime.fromtimestamp(now(), _dt.timezone.utc).isoformat(),
            "git_commit": git_commit(),
            "plan_name": plan.name,
            "plan_fingerprint": plan.fingerprint(),
            "tensors": [{"name": t.name, "datatype": t.triton_dtype, "dims": t.dims} for t in plan.tensors],
            "parameters": model.count_parameters(),
            "weights_bytes": (staging / WEIGHTS_FILE).stat().st_size,
            "embeddings_sha256": _sha256(staging / EMBEDDINGS_FILE),
            "embedding_dim": table.dim,
            **(manifest or {}),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(info, indent=2, default=str))
        (model_dir / "config.pbtxt").write_text(render_config(plan, model_name, max_batch_size, instance_count,
                                                              torch_threads))
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def trim_embeddings(src: Path, dst: Path, last_days: float) -> int:
    """Copy the snapshots with ``snapshot_time >= newest - last_days``; returns the rows kept."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    if table.num_rows == 0:
        shutil.copy2(src, dst)
        return 0
    newest = pc.max(table.column("snapshot_time")).as_py()
    cutoff = newest - int(last_days * 86_400 * 10**9)
    kept = table.filter(pc.greater_equal(table.column("snapshot_time"), cutoff))
    pq.write_table(kept, dst, compression="zstd")
    return kept.num_rows


def empty_embeddings(path: Path, dim: int) -> Path:
    write_embeddings_parquet(path, [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
    return path


def export_untrained(plan: ServingPlan, repo: str | Path, model_name: str = DEFAULT_MODEL_NAME,
                     embeddings: str | Path | None = None, emb_dim: int | None = None, seed: int = 0,
                     config: ShallowConfig | None = None, **kwargs) -> Path:
    """A randomly initialised model with the plan's exact interface (for scorer tests).

    ``embeddings`` defaults to an empty table of ``emb_dim`` (16), so every request is a cold start
    (``cold_start`` = 1 for every key) and uses the learned "no embedding" vectors.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if embeddings is None:
            embeddings = empty_embeddings(Path(tmp) / EMBEDDINGS_FILE, emb_dim or 16)
        dim = EmbeddingTable.from_parquet(embeddings, plan).dim
        if emb_dim is not None and emb_dim != dim:
            raise ExportError(f"emb_dim {emb_dim} != dim {dim} of {embeddings}")
        model = build_model(plan, dim, config, seed=seed)
        manifest = {"trained": False, "seed": seed, "training_data_range": None, "metrics": {}}
        return export_model(plan, repo, model, embeddings, model_name=model_name,
                            manifest={**manifest, **kwargs.pop("manifest", {})}, **kwargs)


# ----- example requests ----------------------------------------------------------------------

def synthetic_requests(plan: ServingPlan, n: int = 4, seed: int = 0, anchor_time: int = 1_710_000_000_000_000_000,
                       seq_lens: Sequence[int] = (3, 0, 7, 32)) -> list[dict[str, np.ndarray]]:
    """Valid single-row requests in the seed's shapes (plan dtypes), incl. an empty history."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        L = int(seq_lens[i % len(seq_lens)])
        req: dict[str, np.ndarray] = {}
        for spec in plan.tensors:
            shape = (1, L, 1) if spec.kind == "rti" else (1, 1 + i % 3, 1) if spec.kind == "candidate" else (1, 1)
            size = int(np.prod(shape))
            if spec.kind == "anchor":
                vals = np.array([anchor_time + i * 60_000_000_000], np.int64)
            elif spec.dtype == "timestamp":
                if spec.kind == "rti":
                    vals = anchor_time - np.sort(rng.integers(1, 3 * 86_400, size))[::-1] * 1_000_000_000
                else:
                    vals = np.array([anchor_time], np.int64)
            elif spec.dtype == "int64":
                vals = rng.integers(0, 50, size)
            elif spec.dtype in ("float32", "float64"):
                vals = np.round(rng.uniform(1, 200, size), 2)
            else:
                vals = np.array([f"v{x}".encode() for x in rng.integers(0, 9, size)], dtype=object)
            req[spec.name] = np.asarray(vals, dtype=spec.numpy_dtype).reshape(shape)
        out.append(req)
    return out


# ----- the self-check against a real Triton ---------------------------------------------------

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


def grpc_infer_outputs(grpc_url: str, model_name: str, plan: ServingPlan, tensors: dict,
                       version: int | None = None) -> dict[str, np.ndarray]:
    """One gRPC inference with the plan's tensors; every output the plan names, by name."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        inputs = []
        for spec in plan.tensors:
            arr = np.asarray(tensors[spec.name])
            inp = grpcclient.InferInput(spec.name, list(arr.shape), spec.triton_dtype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = [grpcclient.InferRequestedOutput(o.name) for o in plan.outputs]
        res = client.infer(model_name, inputs, outputs=outputs, model_version=str(version or ""))
        return {o.name: res.as_numpy(o.name) for o in plan.outputs}
    finally:
        client.close()


def _grpc_infer(grpc_url: str, model_name: str, plan: ServingPlan, tensors: dict, version: int | None = None):
    out = grpc_infer_outputs(grpc_url, model_name, plan, tensors, version)
    return out["score"], out.get("cold_start")


def load_in_triton(http_url: str, model_name: str, timeout_s: float = 120.0) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url.replace("http://", ""), network_timeout=timeout_s)
    try:
        client.load_model(model_name)
        if not client.is_model_ready(model_name):
            raise ExportError(f"Triton reports model {model_name!r} not ready after load")
    finally:
        client.close()


def check_export(version_dir: str | Path, http_url: str, grpc_url: str, requests: Sequence[dict] | None = None,
                 load: bool = True, tolerance: float = TOLERANCE, latency_requests: int = 0) -> dict:
    """Compare Triton's answers (HTTP via curl, gRPC) with the in-process score; raise on mismatch."""
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
    for req, (score, cold) in zip(requests, expected):
        code, body = _curl_infer(http_url, model_name, to_triton_json(plan, req), version)
        if code != 200:
            raise ExportError(f"HTTP {code} from Triton: {body}")
        outs = {o["name"]: o for o in body["outputs"]}
        http_score = np.asarray(outs["score"]["data"], np.float32).reshape(score.shape)
        g_score, g_cold = _grpc_infer(grpc_url, model_name, plan, req, version)
        d_http = float(np.abs(http_score - score).max())
        d_grpc = float(np.abs(g_score.reshape(score.shape) - score).max())
        report["max_abs_diff_http"] = max(report["max_abs_diff_http"], d_http)
        report["max_abs_diff_grpc"] = max(report["max_abs_diff_grpc"], d_grpc)
        if cold is not None:
            http_cold = np.asarray(outs["cold_start"]["data"], np.int8).reshape(cold.shape)
            if not (np.array_equal(http_cold, cold) and np.array_equal(g_cold.reshape(cold.shape), cold)):
                raise ExportError(f"cold_start differs: offline {cold.tolist()}, http {http_cold.tolist()}, "
                                  f"grpc {g_cold.tolist()}")
    # One request carrying several events (batch dim > 1, padded with PAD_TIME), as the scorer sends.
    multi = stack_requests(plan, requests)
    (multi_expected, _), = split_scores(bundle, [multi])
    code, body = _curl_infer(http_url, model_name, to_triton_json(plan, multi), version)
    if code != 200:
        raise ExportError(f"HTTP {code} from Triton for a {len(requests)}-row request: {body}")
    multi_http = np.asarray({o["name"]: o for o in body["outputs"]}["score"]["data"], np.float32)
    single = np.concatenate([s.reshape(-1) for s, _ in expected])
    report["max_abs_diff_multi_row"] = float(max(np.abs(multi_http - single).max(),
                                                 np.abs(multi_expected.reshape(-1) - single).max()))
    report["empty_history_requests"] = sum(
        1 for r in requests if any(np.asarray(r[s.name]).shape[1] == 0 for s in plan.tensors if s.kind == "rti"))
    if max(report["max_abs_diff_http"], report["max_abs_diff_grpc"], report["max_abs_diff_multi_row"]) > tolerance:
        raise ExportError(f"Triton score differs from the offline score by more than {tolerance}: {report}")
    report["error_paths"] = check_error_paths(plan, http_url, model_name, version, requests[0])
    if latency_requests:
        report["grpc_latency_ms_p50"] = triton_latency_ms(grpc_url, model_name, plan, requests, latency_requests)
    report["ok"] = True
    return report


def triton_latency_ms(grpc_url: str, model_name: str, plan: ServingPlan, requests: Sequence[dict], n: int) -> float:
    """Median wall time of ``n`` sequential single-row gRPC requests (one client, after warm-up)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        prepared = []
        for req in requests:
            inputs = []
            for spec in plan.tensors:
                arr = np.asarray(req[spec.name])
                inp = grpcclient.InferInput(spec.name, list(arr.shape), spec.triton_dtype)
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            prepared.append(inputs)
        times = []
        for i in range(n + 5):
            t0 = time.perf_counter()
            client.infer(model_name, prepared[i % len(prepared)])
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))
    finally:
        client.close()


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
