"""Batch embeddings of every entity at a series of snapshot instants -> ``embeddings.parquet``.

Format (read by stage 2 and the Triton model; keep it exactly):

========================  ==========================================================
``entity_type``           string — plan table name (``customers``, ``terminals``)
``entity_id``             int64 — the table's primary key value
``snapshot_time``         int64 ns — computed from data strictly older than this instant
                          and from labels older than ``snapshot_time - label_delay``
``embedding``             fixed_size_list<float32>[dim]
========================  ==========================================================

Written with a ``pyarrow.parquet.ParquetWriter``, one row group per (snapshot, entity type),
so memory stays bounded by one chunk of snapshots whatever the number of snapshots. A JSON sidecar
(``<file>.json``, also stored as parquet key-value metadata ``relstream``) records dim, model,
config, label delay and the snapshot list.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from offline.datasets.base import NS_PER_DAY, RelationalDataset
from offline.deep_model import TemporalHeteroGNN
from offline.evaluate import data_day0_ns
from offline.graph import build_graph
from offline.sampler import SnapshotFeatures
from offline.train_deep import SnapshotSamples, TrainConfig, predict

EMBEDDING_COLUMNS = ("entity_type", "entity_id", "snapshot_time", "embedding")


def embedding_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("entity_type", pa.string()),
        ("entity_id", pa.int64()),
        ("snapshot_time", pa.int64()),
        ("embedding", pa.list_(pa.float32(), dim)),
    ])


def daily_snapshots(ds: RelationalDataset, every_days: int = 1, first_day: int = 1,
                    last_day: int | None = None) -> np.ndarray:
    """Midnights (UTC) ``day0 + d`` for d in first_day..last_day (default: the midnight after
    the last transaction, so the final snapshot has seen all data)."""
    tx = ds.table("transactions")
    day0 = data_day0_ns(tx)
    if last_day is None:
        last_day = int((int(tx["tx_datetime"].max()) - day0) // NS_PER_DAY) + 1
    return day0 + np.arange(first_day, last_day + 1, every_days, dtype=np.int64) * NS_PER_DAY


def write_embeddings(model: TemporalHeteroGNN, cfg: TrainConfig, ds: RelationalDataset, path: str | Path,
                     snapshots_ns: np.ndarray, batch_size: int = 4096, progress: bool = True,
                     extra_meta: dict | None = None) -> dict:
    """Embed all entities at each snapshot; returns the sidecar metadata (also written)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    path = Path(path)
    g = build_graph(ds)
    dim = model.cfg.embedding_dim
    schema = embedding_schema(dim)
    snapshots_ns = np.unique(np.asarray(snapshots_ns, np.int64))
    meta = {
        "format": "relstream-embeddings/1",
        "dim": dim,
        "entity_types": list(g.node_types),
        "label_delay_ns": cfg.label_delay_ns,
        "snapshot_times": snapshots_ns.tolist(),
        "model": {"class": type(model).__name__, "config": model.cfg.to_dict()},
        "train_config": cfg.to_dict(),
        **(extra_meta or {}),
    }
    schema = schema.with_metadata({"relstream": json.dumps(meta)})
    rows = 0
    n_entities = sum(g.num_nodes.values())
    # Snapshots are embedded in chunks of ~4 batches of seeds: small graphs share batches (few
    # forward calls), large ones stay bounded in memory (one chunk of features and vectors).
    per_chunk = max(1, (4 * batch_size) // max(n_entities, 1))
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        bar = tqdm(total=len(snapshots_ns), desc="embed snapshots", disable=not progress, unit="snapshot")
        for lo in range(0, len(snapshots_ns), per_chunk):
            chunk = snapshots_ns[lo:lo + per_chunk]
            feats = SnapshotFeatures(g, chunk, cfg.label_delay_ns)
            parts = []
            for code, t in enumerate(g.node_types):
                n = g.num_nodes[t]
                parts.append((np.full(n * len(chunk), code, np.int8), np.tile(np.arange(n), len(chunk)),
                              np.repeat(chunk, n)))
            samples = SnapshotSamples(*(np.concatenate([p[i] for p in parts]) for i in range(3)),
                                      np.zeros(n_entities * len(chunk), np.float32))
            _, emb = predict(model, g, samples, cfg, feats, batch_size=batch_size, progress=False)
            for snap in chunk:
                for code, t in enumerate(g.node_types):
                    sel = np.flatnonzero((samples.ntype == code) & (samples.time == snap))
                    n = len(sel)
                    flat = pa.array(emb[sel].reshape(-1), pa.float32())
                    writer.write_table(pa.Table.from_arrays([
                        pa.array(np.full(n, t, dtype=object), pa.string()),
                        pa.array(g.node_ids[t][samples.node[sel]], pa.int64()),
                        pa.array(np.full(n, snap, np.int64), pa.int64()),
                        pa.FixedSizeListArray.from_arrays(flat, dim),
                    ], schema=schema))
                    rows += n
            bar.update(len(chunk))
        bar.close()
    meta["rows"] = rows
    meta["seconds"] = time.perf_counter() - t0
    meta["cpu_seconds"] = time.process_time() - cpu0
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_embeddings(path: str | Path, entity_type: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame of entity_type/entity_id/snapshot_time, float32 matrix [rows, dim]). For
    point-in-time lookups use :class:`offline.embeddings.EmbeddingTable` (the plan's rule)."""
    filters = [("entity_type", "=", entity_type)] if entity_type else None
    table = pq.read_table(path, filters=filters)
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    matrix = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim) if len(col) else np.zeros((0, dim), np.float32)
    return table.drop(["embedding"]).to_pandas(), matrix.astype(np.float32, copy=False)
