"""Weekly deep embeddings of households and products (the recsys GNN) -> ``embeddings.parquet``.

Same file format as the fraud path (``offline/embeddings.py``: ``entity_type``, ``entity_id``,
``snapshot_time``, ``embedding`` fixed_size_list<float32>[dim]), read with the recsys plan
(entity types ``households`` and ``products``). A snapshot at S is computed from purchase lines
strictly before S; the plan picks, for an anchor T, the latest S in ``[T - 8 d, T - 1 h]``.

**Vector layout** (dim = embedding_dim + 1), chosen so the deep model's score is one plain dot
product of the two stored vectors:

* household: ``[e_h / sqrt(embedding_dim), 1.0]``
* product:   ``[e_p, b_p]`` where ``b_p`` is the product head's logit (the model's inductive
  popularity bias of the product at S)

so ``h . p = e_h . e_p / sqrt(d) + b_p`` = the GNN's pair score (``train_recsys.pair_scores``).

**Size**: every household with at least one line before S, and only the products with at least
``min_product_lines`` lines in the ``product_weeks`` weeks before S (the candidate sets are the
catalog's top sellers of the last 4 weeks, so a product outside this set is a cold-start
candidate; the quality report counts them). A sidecar ``<file>.json`` records the layout,
snapshots, row counts and timings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from offline.datasets.base import RelationalDataset
from offline.embeddings import EMBEDDING_COLUMNS  # noqa: F401  (the format written here)
from offline.sampler import SamplerConfig, SnapshotFeatures, sample_subgraphs
from offline.train_recsys import HOUSEHOLDS, PRODUCTS, WEEK, build_recsys_graph

VECTOR_LAYOUT = ("household: [e_h / sqrt(embedding_dim), 1.0]; product: [e_p, product head logit]; "
                 "deep score = dot(household, product)")


def embedding_schema(dim: int) -> pa.Schema:
    return pa.schema([("entity_type", pa.string()), ("entity_id", pa.int64()), ("snapshot_time", pa.int64()),
                      ("embedding", pa.list_(pa.float32(), dim))])


def active_entities(g, snapshot: int, product_weeks: int, min_product_lines: int) -> dict[str, np.ndarray]:
    """Node indexes embedded at a snapshot: households with any line before it, products with
    at least ``min_product_lines`` lines in the ``product_weeks`` weeks before it."""
    hi = int(np.searchsorted(g.edge_time, snapshot, side="left"))
    lo = int(np.searchsorted(g.edge_time, snapshot - product_weeks * WEEK, side="left"))
    households = np.unique(g.edge_src[:hi])
    prod, counts = np.unique(g.edge_dst[lo:hi], return_counts=True)
    return {HOUSEHOLDS: households, PRODUCTS: prod[counts >= min_product_lines]}


@torch.no_grad()
def embed_at(model, g, fanouts, feats, ntype: str, idx: np.ndarray, t: int, batch_size: int = 2048):
    """(embeddings, head logits) of nodes ``idx`` of one type at instant t (float32 numpy)."""
    embs, logits = [], []
    for lo in range(0, len(idx), batch_size):
        part = idx[lo:lo + batch_size]
        seeds = {ntype: (part, np.full(len(part), t, np.int64))}
        batch = sample_subgraphs(g, seeds, SamplerConfig(tuple(fanouts), 0), feats)
        e, b = model(batch.to(next(model.parameters()).device))[ntype]  # --device cuda: batch to the model
        embs.append(e.float().cpu().numpy())
        logits.append(b.float().cpu().numpy())
    dim = model.cfg.embedding_dim
    if not embs:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.float32)
    return np.concatenate(embs), np.concatenate(logits)


def stored_vectors(ntype: str, emb: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """The stored layout (module docstring): households scaled + 1, products + head logit."""
    if ntype == HOUSEHOLDS:
        return np.hstack([emb / np.sqrt(emb.shape[1]), np.ones((len(emb), 1), np.float32)]).astype(np.float32)
    return np.hstack([emb, logit[:, None]]).astype(np.float32)


def weekly_snapshots(first: int, last: int, every_days: float = 7) -> np.ndarray:
    """Snapshot instants from ``first`` to ``last`` inclusive, ``every_days`` apart."""
    step = int(every_days * 86_400 * 10**9)
    return np.arange(int(first), int(last) + 1, step, dtype=np.int64)


def write_recsys_embeddings(model, fanouts, ds: RelationalDataset, path: str | Path, snapshots_ns,
                            product_weeks: int = 4, min_product_lines: int = 3, batch_size: int = 2048,
                            progress: bool = True, extra_meta: dict | None = None) -> dict:
    """Embed households and recent products at each snapshot; returns the sidecar metadata."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    path = Path(path)
    model.eval()
    g = build_recsys_graph(ds)
    snapshots_ns = np.unique(np.asarray(snapshots_ns, np.int64))
    dim = model.cfg.embedding_dim + 1
    meta = {"format": "relstream-embeddings/1", "plan": "recsys", "dim": dim, "layout": VECTOR_LAYOUT,
            "entity_types": [HOUSEHOLDS, PRODUCTS], "snapshot_times": snapshots_ns.tolist(),
            "product_weeks": product_weeks, "min_product_lines": min_product_lines,
            "model": {"class": type(model).__name__, "config": model.cfg.to_dict()}, "fanouts": list(fanouts),
            **(extra_meta or {})}
    schema = embedding_schema(dim).with_metadata({"relstream": json.dumps(meta)})
    rows = {HOUSEHOLDS: 0, PRODUCTS: 0}
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        bar = tqdm(snapshots_ns, desc="recsys embed snapshots", disable=not progress, unit="snapshot")
        for snap in bar:
            snap = int(snap)
            feats = SnapshotFeatures(g, [snap], 0)
            for ntype, idx in active_entities(g, snap, product_weeks, min_product_lines).items():
                emb, logit = embed_at(model, g, fanouts, feats, ntype, idx, snap, batch_size)
                vec = stored_vectors(ntype, emb, logit)
                writer.write_table(pa.Table.from_arrays([
                    pa.array(np.full(len(idx), ntype, dtype=object), pa.string()),
                    pa.array(g.node_ids[ntype][idx], pa.int64()),
                    pa.array(np.full(len(idx), snap, np.int64), pa.int64()),
                    pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), pa.float32()), dim),
                ], schema=schema))
                rows[ntype] += len(idx)
            bar.set_postfix(households=rows[HOUSEHOLDS], products=rows[PRODUCTS])
    meta.update(rows=rows, total_rows=sum(rows.values()), bytes=path.stat().st_size,
                seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0)
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
