"""Loading and running an exported ranker version directory (in Triton or in-process).

Vendored into every ranker bundle next to :mod:`offline.ranker` and :mod:`offline.embeddings`.
The Triton ``model.py`` (``offline/triton_ranker/model.py``), the export self-check and
in-process callers (the recommend endpoint's tests, the quality report) all call
:func:`split_ranking_scores`, so every path computes scores with the very code Triton runs.

A version directory holds ``model.pt`` (state dict + hyper-parameters), ``embeddings.parquet``,
``plan.yaml``, ``manifest.json`` and ``catalog.parquet``: the most purchased products before the
export cut (``product_id`` int64, ``rank`` int32 from 1, ``purchases`` int64), the candidate set
of "from catalog top-N" requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from offline.embeddings import EmbeddingTable
from offline.ranker import RankerModel, build_ranker, score_ranking
from schemas.plan import ServingPlan, load_plan
from schemas.tensors import stack_requests

WEIGHTS_FILE = "model.pt"
EMBEDDINGS_FILE = "embeddings.parquet"
PLAN_FILE = "plan.yaml"
MANIFEST_FILE = "manifest.json"
CATALOG_FILE = "catalog.parquet"
CATALOG_COLUMNS = ("product_id", "rank", "purchases")


@dataclass
class RankerBundle:
    plan: ServingPlan
    model: RankerModel
    embeddings: EmbeddingTable
    manifest: dict
    catalog: np.ndarray  # candidate ids, most purchased first (may be empty)

    def top_catalog(self, n: int) -> np.ndarray:
        """The first ``n`` catalog products (the "from catalog top-N" candidate set)."""
        return self.catalog[:n]


def write_catalog(path: str | Path, product_ids, purchases) -> Path:
    """``catalog.parquet``: products in rank order (``purchases`` descending, as given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.asarray(product_ids, np.int64).reshape(-1)
    counts = np.asarray(purchases, np.int64).reshape(-1)
    if ids.shape != counts.shape:
        raise ValueError(f"catalog: {len(ids)} product ids but {len(counts)} purchase counts")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("catalog.product_id: duplicate product ids")
    pq.write_table(pa.table({"product_id": pa.array(ids, pa.int64()),
                             "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int32), pa.int32()),
                             "purchases": pa.array(counts, pa.int64())}), path)
    return Path(path)


def read_catalog(path: str | Path) -> np.ndarray:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        return np.zeros(0, np.int64)
    table = pq.read_table(path)
    for col in CATALOG_COLUMNS:
        if col not in table.column_names:
            raise ValueError(f"{path}: missing column {col!r} (has {table.column_names})")
    ids = table.column("product_id").to_numpy().astype(np.int64)
    rank = table.column("rank").to_numpy()
    return ids[np.argsort(rank, kind="stable")]


def load_ranker_bundle(version_dir: str | Path, device: str = "cpu") -> RankerBundle:
    version_dir = Path(version_dir)
    plan = load_plan(version_dir / PLAN_FILE)
    state = torch.load(version_dir / WEIGHTS_FILE, map_location=device, weights_only=True)
    if state.get("kind") != "ranker":
        raise ValueError(f"{version_dir / WEIGHTS_FILE}: not a ranker bundle (kind {state.get('kind')!r})")
    model = build_ranker(plan, int(state["emb_dim"]), dict(state["config"]))
    model.load_state_dict(state["state_dict"])
    model.to(device).eval()
    table = EmbeddingTable.from_parquet(version_dir / EMBEDDINGS_FILE, plan)
    if table.dim != model.emb_dim:
        raise ValueError(f"{EMBEDDINGS_FILE}: embedding dim {table.dim} != model's {model.emb_dim}")
    manifest_path = version_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return RankerBundle(plan, model, table, manifest, read_catalog(version_dir / CATALOG_FILE))


def ranking_request_error(plan: ServingPlan, tensors: dict) -> str | None:
    """Why one ranking request (batch dim b >= 1, maybe pre-padded) cannot be scored; None if fine.

    Triton rejects missing tensors and wrong datatypes itself, naming the tensor; this checks
    what its config cannot express: equal batch dims, equal sequence lengths within the hop, and
    the candidate count bound of the plan.
    """
    batch = None
    seq: dict[str, tuple[str, int]] = {}
    for spec in plan.tensors:
        arr = tensors.get(spec.name)
        if arr is None:
            return f"{spec.name}: missing tensor"
        want_ndim = 3 if spec.ragged else 2
        if arr.ndim != want_ndim or arr.shape[-1] != 1:
            shape = ("[b, n_candidates, 1]" if spec.kind == "candidate" else "[b, seq_len, 1]") if spec.ragged \
                else "[b, 1]"
            return f"{spec.name}: expected shape {shape}, got {list(arr.shape)}"
        if batch is None:
            batch = (spec.name, arr.shape[0])
        elif arr.shape[0] != batch[1]:
            return f"{spec.name}: batch size {arr.shape[0]} differs from {batch[1]} of {batch[0]}"
        if spec.kind == "candidate" and not 1 <= arr.shape[1] <= plan.max_candidates:
            return f"{spec.name}: expected 1 to {plan.max_candidates} candidates, got {arr.shape[1]}"
        if spec.kind == "rti":
            first = seq.setdefault(spec.hop_key, (spec.name, arr.shape[1]))
            if arr.shape[1] != first[1]:
                return f"{spec.name}: seq_len {arr.shape[1]} differs from {first[1]} of {first[0]}"
    return None


def split_ranking_scores(bundle: RankerBundle, requests: list[dict]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score requests together; per request ``(score float32[b, n], cold_start int8[b, K],
    candidate_cold_start int8[b, n])`` with that request's own candidate count ``n``."""
    plan = bundle.plan
    stacked = stack_requests(plan, requests)
    scores, cold, cand_cold = score_ranking(bundle.model, plan, stacked, bundle.embeddings)
    out, start = [], 0
    for req in requests:
        b, n = np.asarray(req[plan.candidate_tensor]).shape[:2]
        out.append((scores[start:start + b, :n].astype(np.float32), cold[start:start + b].astype(np.int8),
                    cand_cold[start:start + b, :n].astype(np.int8)))
        start += b
    return out


__all__ = ["CATALOG_FILE", "RankerBundle", "load_ranker_bundle", "ranking_request_error", "read_catalog",
           "split_ranking_scores", "write_catalog"]
