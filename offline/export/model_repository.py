"""Export the distilled model of either plan kind as a Triton model repository version.

Layout written by :func:`export_model` (one new version directory per export)::

    <repo>/<model_name>/config.pbtxt            inputs = the plan's tensors, Python backend
    <repo>/<model_name>/<N>/model.py            offline/export/triton_model/model.py
    <repo>/<model_name>/<N>/model.pt            state dict + head configuration (torch.load weights_only)
    <repo>/<model_name>/<N>/embeddings.parquet  the deep model's entity embeddings
    <repo>/<model_name>/<N>/catalog.parquet     ranking plans: most frequent candidates before the export cut
    <repo>/<model_name>/<N>/plan.yaml           the serving plan
    <repo>/<model_name>/<N>/manifest.json       data range, metrics, git commit, plan fingerprint
    <repo>/<model_name>/<N>/vendor/             schemas/{plan,plan_loading,values,interactions,tensors}.py,
                                                offline/embeddings.py, offline/distillation/shallow_model.py,
                                                offline/export/bundle.py

The self-check against a real Triton is :mod:`offline.export.self_check`.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from offline.distillation.shallow_model import RankingConfig, ScoringConfig, ShallowModel, build_model, save_model
from offline.embeddings import EmbeddingTable, random_embeddings, write_embeddings_parquet
from offline.export.bundle import CATALOG_FILE, EMBEDDINGS_FILE, MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE, write_catalog
from schemas.files import file_sha256
from schemas.interactions import Window
from schemas.plan import ServingPlan
from schemas.tensors import build_tensors

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = Path(__file__).parent / "triton_model"
# Triton model names by plan kind (the scorer's defaults: score.triton.model_name, recommend's)
DEFAULT_MODEL_NAME = "relstream"
DEFAULT_RANKING_MODEL_NAME = "relstream_ranker"
# Code the bundle needs, copied verbatim (paths relative to the repository root).
# The schemas modules are bundle.py's and shallow_model.py's imports with their own (plan_loading for
# load_plan; tensors -> interactions, values).
VENDORED = ("schemas/plan.py", "schemas/plan_loading.py", "schemas/values.py", "schemas/interactions.py",
            "schemas/tensors.py", "offline/embeddings.py", "offline/distillation/shallow_model.py",
            "offline/export/bundle.py")


class ExportError(RuntimeError):
    pass


def default_model_name(plan: ServingPlan) -> str:
    return DEFAULT_RANKING_MODEL_NAME if plan.is_ranking else DEFAULT_MODEL_NAME


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
        # bare packages: only the vendored modules, no side imports
        for pkg in Path(rel).parents:
            if str(pkg) != "." and not (dst / pkg / "__init__.py").exists():
                (dst / pkg / "__init__.py").write_text('"""Vendored by relstream offline export."""\n')


def export_model(plan: ServingPlan, repo: str | Path, model: ShallowModel, embeddings: str | Path, *,
                 catalog: tuple[Sequence[int], Sequence[int]] | None = None, model_name: str | None = None,
                 manifest: dict | None = None, max_batch_size: int | None = None, instance_count: int = 1,
                 torch_threads: int = 1, now: Callable[[], float] = time.time,
                 embeddings_last_days: float | None = None) -> Path:
    """Write a new version of ``model_name`` (default by plan kind) into the repository; returns
    the version directory.

    Ranking plans need ``catalog``: ``(candidate ids, counts)`` in rank order (e.g.
    ``InteractionIndex.popular`` at the export cut). ``embeddings_last_days`` keeps only the snapshots of
    the last N days (counted back from the newest snapshot) in the bundle: serving needs no more
    than ``max_embedding_offset``. ``max_batch_size`` defaults to 256 (scoring) / 64 (ranking).
    """
    if plan.is_ranking and catalog is None:
        raise ExportError(f"catalog: plan {plan.name!r} ranks candidates; its export needs the candidate catalog")
    model_name = model_name or default_model_name(plan)
    max_batch_size = max_batch_size or (64 if plan.is_ranking else 256)
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
        save_model(staging / WEIGHTS_FILE, model, plan)
        if embeddings_last_days is None:
            shutil.copy2(embeddings, staging / EMBEDDINGS_FILE)
        else:
            trim_embeddings(embeddings, staging / EMBEDDINGS_FILE, embeddings_last_days)
        if catalog is not None:
            write_catalog(staging / CATALOG_FILE, *catalog)
        (staging / PLAN_FILE).write_text(plan.to_yaml())
        info = {
            "model_name": model_name,
            "kind": "ranking" if plan.is_ranking else "scoring",
            "version": version,
            "created_at": _dt.datetime.fromtimestamp(now(), _dt.timezone.utc).isoformat(),
            "git_commit": git_commit(),
            "plan_name": plan.name,
            "plan_fingerprint": plan.fingerprint(),
            "tensors": [{"name": t.name, "datatype": t.triton_dtype, "dims": t.dims} for t in plan.tensors],
            "outputs": [{"name": o.name, "datatype": o.triton_dtype, "dims": list(o.dims)} for o in plan.outputs],
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights_bytes": (staging / WEIGHTS_FILE).stat().st_size,
            "embeddings_bytes": (staging / EMBEDDINGS_FILE).stat().st_size,
            "embeddings_sha256": file_sha256(staging / EMBEDDINGS_FILE),
            "embedding_dim": table.dim,
            **({"catalog_size": len(np.asarray(catalog[0]))} if catalog is not None else {}),
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


def export_untrained(plan: ServingPlan, repo: str | Path, model_name: str | None = None, *,
                     embeddings: str | Path | None = None, emb_dim: int | None = None, seed: int = 0,
                     config: ScoringConfig | RankingConfig | None = None, households: Sequence[int] = range(1, 101),
                     products: Sequence[int] = range(1, 501), snapshot_times: Sequence[int] | None = None,
                     **kwargs) -> Path:
    """A randomly initialised model with the plan's exact interface (for serving tests).

    Embeddings: ``embeddings`` if given; else, for ranking plans with ``snapshot_times`` (ns),
    random vectors for ``households`` (the entity key) and ``products`` (the candidate key) at each
    snapshot; else an empty table of ``emb_dim`` (16), so every request is a cold start
    (``cold_start`` = 1 for every key) and uses the learned "no embedding" vectors. Ranking
    plans get a synthetic catalog listing ``products`` in the given order.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if embeddings is None:
            path = Path(tmp) / EMBEDDINGS_FILE
            if plan.is_ranking and snapshot_times:
                types, ids, snaps, vecs = random_embeddings(
                    plan, {t: np.asarray(list(v), np.int64) for t, v in
                           zip(plan.embedding_entity_types, _ids_by_key(plan, households, products))},
                    snapshot_times, dim=emb_dim or 16, seed=seed)
                write_embeddings_parquet(path, types, ids, snaps, vecs)
            else:
                empty_embeddings(path, emb_dim or 16)
            embeddings = path
        dim = EmbeddingTable.from_parquet(embeddings, plan).dim
        if emb_dim is not None and emb_dim != dim:
            raise ExportError(f"emb_dim {emb_dim} != dim {dim} of {embeddings}")
        model = build_model(plan, dim, config, seed=seed)
        if plan.is_ranking:
            prods = np.asarray(list(products), np.int64)
            kwargs["catalog"] = (prods, np.arange(len(prods), 0, -1, dtype=np.int64))
        manifest = {"trained": False, "seed": seed, "training_data_range": None, "metrics": {}}
        return export_model(plan, repo, model, embeddings, model_name=model_name,
                            manifest={**manifest, **kwargs.pop("manifest", {})}, **kwargs)


def _ids_by_key(plan: ServingPlan, households, products):
    """Per embedding key (plan order): the candidate key gets ``products``, the other ``households``."""
    return [products if k.column == plan.candidate_column else households for k in plan.embedding_keys]


# ----- example requests ----------------------------------------------------------------------

def _synthetic_scoring_requests(plan: ServingPlan, n: int = 4, seed: int = 0, anchor_time: int = 1_710_000_000_000_000_000,
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


def _synthetic_ranking_requests(plan: ServingPlan, n: int = 4, seed: int = 0,
                               anchor_time: int = 1_710_000_000_000_000_000, households=range(1, 101),
                               products=range(1, 501), seq_lens: Sequence[int] = (5, 0, 30, 100),
                               n_candidates: Sequence[int] = (10, 1, 100, 37)) -> list[dict[str, np.ndarray]]:
    """Valid single-request tensors (seed shapes) built by ``build_tensors`` from synthetic
    windows: the newest lines form an open basket, older ones earlier baskets; incl. an empty
    history and a single candidate."""
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
            elif c == RankingConfig().session_column:
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


def synthetic_requests(plan: ServingPlan, n: int = 4, seed: int = 0, **kwargs) -> list[dict[str, np.ndarray]]:
    """Valid single-request tensors in the seed's shapes (plan dtypes) for either kind, incl. an
    empty history (ranking: built by ``build_tensors`` from synthetic windows, incl. a single
    candidate)."""
    make = _synthetic_ranking_requests if plan.is_ranking else _synthetic_scoring_requests
    return make(plan, n=n, seed=seed, **kwargs)


__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_RANKING_MODEL_NAME", "ExportError", "default_model_name", "empty_embeddings",
           "export_model", "export_untrained", "render_config", "synthetic_requests", "trim_embeddings", "vendor_code"]
