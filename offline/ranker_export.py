"""Export the distilled ranker of a ranking plan as a Triton model version, and check it on a real Triton.

Layout (one new version directory per export, like the fraud export of :mod:`offline.export`)::

    <repo>/<model_name>/config.pbtxt            offline/export.py render_config(plan): ragged candidates
    <repo>/<model_name>/<N>/model.py            offline/triton_ranker/model.py
    <repo>/<model_name>/<N>/model.pt            state dict + hyper-parameters (kind "ranker")
    <repo>/<model_name>/<N>/embeddings.parquet  deep embeddings (trimmed to the recent snapshots)
    <repo>/<model_name>/<N>/catalog.parquet     most purchased products before the export cut
    <repo>/<model_name>/<N>/plan.yaml           the serving plan
    <repo>/<model_name>/<N>/manifest.json       data range, metrics, git commit, plan fingerprint
    <repo>/<model_name>/<N>/vendor/             schemas/ + offline/{embeddings,ranker,ranker_bundle}.py

:func:`check_ranker_export` loads the version through explicit model control, sends seed-shaped
JSON over HTTP (curl) and the same tensors over gRPC, compares every output with the in-process
answer of the same bundle code (|diff| <= 1e-5), sends one multi-row request (padded candidates
must come back ``-inf``), and checks that bad requests fail with errors naming the tensor.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from offline.embeddings import EmbeddingTable, random_embeddings, write_embeddings_parquet
from offline.export import (ExportError, _curl_infer, check_error_paths, empty_embeddings, git_commit,
                            grpc_infer_outputs, load_in_triton, next_version, render_config, trim_embeddings)
from offline.ranker import RankerConfig, RankerModel, build_ranker
from offline.ranker_bundle import (CATALOG_FILE, EMBEDDINGS_FILE, MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE,
                                   load_ranker_bundle, split_ranking_scores, write_catalog)
from schemas.files import file_sha256
from schemas.plan import ServingPlan
from schemas.tensors import stack_requests, to_triton_json

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = Path(__file__).parent / "triton_ranker"
DEFAULT_RANKER_NAME = "relstream_ranker"
# Code the ranker bundle needs, copied verbatim (paths relative to the repository root).
RANKER_VENDORED = ("schemas/plan.py", "schemas/tensors.py", "offline/embeddings.py", "offline/ranker.py",
                   "offline/ranker_bundle.py")
TOLERANCE = 1e-5


def _vendor(dst: Path) -> None:
    for rel in RANKER_VENDORED:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    for pkg in ("schemas", "offline"):  # bare packages: only the vendored modules, no side imports
        (dst / pkg / "__init__.py").write_text('"""Vendored by relstream offline export."""\n')


def save_ranker(path: str | Path, model: RankerModel, extra: dict | None = None) -> Path:
    """The weights file of a bundle (and of ``RUN/ranker.pt``): loadable with ``weights_only``."""
    state = {"kind": "ranker", "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "config": model.config.to_dict(), "emb_dim": int(model.emb_dim), **(extra or {})}
    torch.save(state, path)
    return Path(path)


def load_ranker(path: str | Path, plan: ServingPlan, device: str = "cpu") -> RankerModel:
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("kind") != "ranker":
        raise ExportError(f"{path}: not a ranker weights file (kind {state.get('kind')!r})")
    fp = state.get("plan_fingerprint")
    if fp and fp != plan.fingerprint():
        raise ExportError(f"{path}: trained for plan fingerprint {fp}, not {plan.fingerprint()} ({plan.name})")
    model = build_ranker(plan, int(state["emb_dim"]), dict(state["config"]))
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval()


def export_ranker(plan: ServingPlan, repo: str | Path, model: RankerModel, embeddings: str | Path,
                  catalog: tuple[Sequence[int], Sequence[int]], *, model_name: str = DEFAULT_RANKER_NAME,
                  manifest: dict | None = None, max_batch_size: int = 64, instance_count: int = 1,
                  torch_threads: int = 1, now: Callable[[], float] = time.time,
                  embeddings_last_days: float | None = None) -> Path:
    """Write a new version of ``model_name`` into the repository; returns the version directory.

    ``catalog`` is ``(product_ids, purchases)`` in rank order (e.g. ``popular_products`` at the
    export cut). ``embeddings_last_days`` keeps only the snapshots of the last N days (counted
    back from the newest snapshot): serving needs no more than ``max_embedding_offset``.
    """
    if not plan.is_ranking:
        raise ExportError(f"plan {plan.name!r} is not a ranking plan; use offline.export.export_model")
    repo = Path(repo)
    model_dir = repo / model_name
    embeddings = Path(embeddings)
    table = EmbeddingTable.from_parquet(embeddings, plan)  # validates the file before anything is written
    if table.dim != model.emb_dim:
        raise ExportError(f"embeddings: dim {table.dim} != ranker emb_dim {model.emb_dim}")
    version = next_version(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    # Build in a hidden sibling and rename: Triton never sees a half-written version.
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        shutil.copy2(TEMPLATE_DIR / "model.py", staging / "model.py")
        _vendor(staging / "vendor")
        save_ranker(staging / WEIGHTS_FILE, model, {"plan_fingerprint": plan.fingerprint()})
        if embeddings_last_days is None:
            shutil.copy2(embeddings, staging / EMBEDDINGS_FILE)
        else:
            trim_embeddings(embeddings, staging / EMBEDDINGS_FILE, embeddings_last_days)
        write_catalog(staging / CATALOG_FILE, *catalog)
        (staging / PLAN_FILE).write_text(plan.to_yaml())
        info = {
            "model_name": model_name,
            "kind": "ranker",
            "version": version,
            "created_at": _dt.datetime.fromtimestamp(now(), _dt.timezone.utc).isoformat(),
            "git_commit": git_commit(),
            "plan_name": plan.name,
            "plan_fingerprint": plan.fingerprint(),
            "tensors": [{"name": t.name, "datatype": t.triton_dtype, "dims": t.dims} for t in plan.tensors],
            "outputs": [{"name": o.name, "datatype": o.triton_dtype, "dims": list(o.dims)} for o in plan.outputs],
            "parameters": model.count_parameters(),
            "weights_bytes": (staging / WEIGHTS_FILE).stat().st_size,
            "embeddings_bytes": (staging / EMBEDDINGS_FILE).stat().st_size,
            "embeddings_sha256": file_sha256(staging / EMBEDDINGS_FILE),
            "embedding_dim": table.dim,
            "catalog_size": len(np.asarray(catalog[0])),
            **(manifest or {}),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(info, indent=2, default=str))
        (model_dir / "config.pbtxt").write_text(render_config(plan, model_name, max_batch_size, instance_count,
                                                              torch_threads))
        staging.rename(staging.parent / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_dir / str(version)


def export_untrained_ranker(plan: ServingPlan, repo: str | Path, model_name: str = DEFAULT_RANKER_NAME, *,
                            households: Sequence[int] = range(1, 101), products: Sequence[int] = range(1, 501),
                            snapshot_times: Sequence[int] | None = None, embeddings: str | Path | None = None,
                            emb_dim: int = 16, seed: int = 0, config: RankerConfig | None = None,
                            **kwargs) -> Path:
    """A real ranker with random weights and the plan's exact interface (for serving tests).

    Embeddings: ``embeddings`` if given; else random vectors for ``households`` and ``products`` at
    each of ``snapshot_times`` (ns; a request at anchor T uses the latest snapshot in
    ``[T - 8 d, T - 1 h]``); with no snapshot times the table is empty and every request is a cold
    start. The catalog lists ``products`` in the given order (purchases descending, synthetic).
    """
    with tempfile.TemporaryDirectory() as tmp:
        if embeddings is None:
            path = Path(tmp) / EMBEDDINGS_FILE
            if snapshot_times:
                types, ids, snaps, vecs = random_embeddings(
                    plan, {t: np.asarray(list(v), np.int64) for t, v in
                           zip(plan.embedding_entity_types, _ids_by_key(plan, households, products))},
                    snapshot_times, dim=emb_dim, seed=seed)
                write_embeddings_parquet(path, types, ids, snaps, vecs)
            else:
                empty_embeddings(path, emb_dim)
            embeddings = path
        dim = EmbeddingTable.from_parquet(embeddings, plan).dim
        model = build_ranker(plan, dim, config, seed=seed)
        prods = np.asarray(list(products), np.int64)
        catalog = (prods, np.arange(len(prods), 0, -1, dtype=np.int64))
        manifest = {"trained": False, "seed": seed, "training_data_range": None, "metrics": {}}
        return export_ranker(plan, repo, model, embeddings, catalog, model_name=model_name,
                             manifest={**manifest, **kwargs.pop("manifest", {})}, **kwargs)


def _ids_by_key(plan: ServingPlan, households, products):
    """Per embedding key (plan order): the candidate key gets ``products``, the other ``households``."""
    return [products if k.column == plan.candidate_column else households for k in plan.embedding_keys]


# ----- example requests ----------------------------------------------------------------------

def synthetic_ranking_requests(plan: ServingPlan, n: int = 4, seed: int = 0,
                               anchor_time: int = 1_710_000_000_000_000_000, households=range(1, 101),
                               products=range(1, 501), seq_lens: Sequence[int] = (5, 0, 30, 100),
                               n_candidates: Sequence[int] = (10, 1, 100, 37)) -> list[dict[str, np.ndarray]]:
    """Valid single-request tensors (seed shapes) built by ``build_tensors`` from synthetic
    windows: the newest lines form an open basket, older ones earlier baskets; incl. an empty
    history and a single candidate."""
    from schemas.tensors import Window, build_tensors

    rng = np.random.default_rng(seed)
    hh, prods = np.asarray(list(households)), np.asarray(list(products))
    hop = plan.hops[0]
    table = plan.interaction_table(hop)
    out = []
    for i in range(n):
        L, N = int(seq_lens[i % len(seq_lens)]), int(n_candidates[i % len(n_candidates)])
        T = anchor_time + i * 60 * 10**9
        # Oldest first: lines of days-old baskets, then the last 3 lines in the open basket (seconds old).
        ages = np.concatenate([np.sort(rng.integers(86_400, 20 * 86_400, max(L - 3, 0)))[::-1] * 10**9,
                               np.array([30, 20, 10][-min(L, 3):] if L else [], np.int64) * 10**9]).astype(np.int64)
        cols = {}
        for c in hop.columns:
            dtype = table.columns[c]
            if c == table.time_column:
                cols[c] = T - ages
            elif c == plan.candidate_column:
                cols[c] = rng.choice(prods, L).astype(np.int64)
            elif c == "basket_id":
                cols[c] = np.where(ages < 3_600 * 10**9, 10**6 + i, (T - ages) // 86_400 // 10**9).astype(np.int64)
            elif dtype == "int64":
                cols[c] = rng.integers(1, 4, L).astype(np.int64)
            else:
                cols[c] = np.round(rng.uniform(0.5, 20, L), 2).astype(np.float32)
        window = Window(cols[table.time_column], {c: cols[c] for c in hop.columns})
        fact = {c: int(rng.choice(hh)) for c in plan.fact_columns if c != plan.candidate_column}
        cands = rng.choice(prods, N, replace=False).astype(np.int64)
        out.append(build_tensors(plan, fact, {hop.key.key: window}, anchor_time=T, candidates=cands))
    return out


# ----- the self-check against a real Triton ---------------------------------------------------

def _diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| where infinities must match exactly (padded candidates)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    fin = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)) or not np.array_equal(a[~fin], b[~fin]):
        return float("inf")
    return float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0


def check_ranker_export(version_dir: str | Path, http_url: str, grpc_url: str, requests: Sequence[dict] | None = None,
                        load: bool = True, tolerance: float = TOLERANCE, latency_requests: int = 0,
                        latency_candidates: int = 100) -> dict:
    """Compare Triton's answers (HTTP via curl, gRPC) with the in-process ranking; raise on mismatch.

    ``latency_requests`` > 0 also times one request of ``latency_candidates`` catalog candidates
    (the longest history among ``requests``) in-process and through Triton gRPC, sequentially."""
    version_dir = Path(version_dir)
    model_name, version = version_dir.parent.name, int(version_dir.name)
    bundle = load_ranker_bundle(version_dir)
    plan = bundle.plan
    requests = list(requests or synthetic_ranking_requests(plan))
    if load:
        load_in_triton(http_url, model_name)
    expected = split_ranking_scores(bundle, requests)
    report: dict[str, Any] = {"model": model_name, "version": version, "requests": len(requests),
                              "candidates": [int(np.shape(r[plan.candidate_tensor])[1]) for r in requests],
                              "max_abs_diff_http": 0.0, "max_abs_diff_grpc": 0.0}
    for req, (score, cold, cand_cold) in zip(requests, expected):
        code, body = _curl_infer(http_url, model_name, to_triton_json(plan, req), version)
        if code != 200:
            raise ExportError(f"HTTP {code} from Triton: {body}")
        outs = {o["name"]: o for o in body["outputs"]}
        http = {name: np.asarray(outs[name]["data"]).reshape(outs[name]["shape"]) for name in outs}
        grpc = grpc_infer_outputs(grpc_url, model_name, plan, req, version)
        report["max_abs_diff_http"] = max(report["max_abs_diff_http"], _diff(http["score"], score))
        report["max_abs_diff_grpc"] = max(report["max_abs_diff_grpc"], _diff(grpc["score"], score))
        for name, want in (("cold_start", cold), ("candidate_cold_start", cand_cold)):
            if not (np.array_equal(http[name], want) and np.array_equal(grpc[name], want)):
                raise ExportError(f"{name} differs: offline {want.tolist()}, http {http[name].tolist()}, "
                                  f"grpc {grpc[name].tolist()}")
    # One request carrying several rows (batch dim > 1): candidates padded with PAD_CANDIDATE.
    multi = stack_requests(plan, requests)
    grpc = grpc_infer_outputs(grpc_url, model_name, plan, multi, version)
    (multi_expected, _, _), = split_ranking_scores(bundle, [multi])
    single = np.full(multi_expected.shape, -np.inf, np.float32)
    for i, (score, _, _) in enumerate(expected):
        single[i, :score.shape[1]] = score[0]
    report["max_abs_diff_multi_row"] = max(_diff(grpc["score"], single), _diff(multi_expected, single))
    report["padded_candidates_minus_inf"] = bool(np.isneginf(grpc["score"][single == -np.inf]).all())
    worst = max(report["max_abs_diff_http"], report["max_abs_diff_grpc"], report["max_abs_diff_multi_row"])
    if worst > tolerance or not report["padded_candidates_minus_inf"]:
        raise ExportError(f"Triton ranking differs from the offline ranking by more than {tolerance}: {report}")
    report["error_paths"] = check_error_paths(plan, http_url, model_name, version, requests[0])
    report["error_paths"]["no_candidates"] = _check_no_candidates(plan, http_url, model_name, version, requests[0])
    if latency_requests:
        report["latency"] = ranking_latency(bundle, grpc_url, model_name, requests, latency_requests,
                                            latency_candidates)
    report["ok"] = True
    return report


def latency_request(bundle, requests: Sequence[dict], n_candidates: int) -> dict:
    """The request with the longest history, re-pointed at the catalog's top ``n_candidates``."""
    plan = bundle.plan
    hop = plan.hops[0]
    longest = max(requests, key=lambda r: np.shape(r[f"{hop.key.key}:{hop.columns[0]}"])[1])
    cands = bundle.top_catalog(n_candidates)
    if len(cands) < n_candidates:
        raise ExportError(f"catalog: {len(cands)} products, fewer than the {n_candidates} latency candidates")
    return dict(longest, **{plan.candidate_tensor: cands.astype(np.int64).reshape(1, -1, 1)})


def _percentiles(ms: list[float]) -> dict:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(ms)}


def ranking_latency(bundle, grpc_url: str, model_name: str, requests: Sequence[dict], n: int,
                    n_candidates: int = 100) -> dict:
    """Sequential latency of one ranking request (after warm-up): in-process (wall and this
    process's CPU per request, torch threads as set) and through Triton gRPC (client wall)."""
    import tritonclient.grpc as grpcclient

    plan = bundle.plan
    req = latency_request(bundle, requests, n_candidates)
    wall, cpu = [], []
    for i in range(n + 5):
        t0, c0 = time.perf_counter(), time.process_time()
        split_ranking_scores(bundle, [req])
        if i >= 5:
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        inputs = []
        for spec in plan.tensors:
            arr = np.asarray(req[spec.name])
            inp = grpcclient.InferInput(spec.name, list(arr.shape), spec.triton_dtype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        triton = []
        for i in range(n + 5):
            t0 = time.perf_counter()
            client.infer(model_name, inputs)
            if i >= 5:
                triton.append((time.perf_counter() - t0) * 1e3)
    finally:
        client.close()
    hop = plan.hops[0]
    return {"candidates": n_candidates, "history": int(np.shape(req[f"{hop.key.key}:{hop.columns[0]}"])[1]),
            "in_process_ms": _percentiles(wall), "in_process_cpu_ms": _percentiles(cpu),
            "triton_grpc_ms": _percentiles(triton), "torch_threads": torch.get_num_threads()}


def _check_no_candidates(plan: ServingPlan, http_url: str, model_name: str, version: int, request: dict) -> dict:
    body = to_triton_json(plan, request)
    item = next(i for i in body["inputs"] if i["name"] == plan.candidate_tensor)
    item["shape"], item["data"] = [1, 0, 1], []
    code, resp = _curl_infer(http_url, model_name, body, version)
    if code == 200 or plan.candidate_tensor not in json.dumps(resp):
        raise ExportError(f"a request without candidates was not rejected by name: HTTP {code} {resp}")
    return {"http": code, "error": resp.get("error")}


__all__ = ["DEFAULT_RANKER_NAME", "check_ranker_export", "export_ranker", "export_untrained_ranker", "load_ranker",
           "save_ranker", "synthetic_ranking_requests"]
