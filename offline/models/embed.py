"""Batch embeddings of the entities the serving plan's embedding keys point to -> ``embeddings.parquet``.

Same format as ever (``offline.embeddings`` documents it; ``offline.embeddings.EmbeddingTable``
reads it): one row per (entity type, entity id, snapshot time), a vector computed from data
strictly older than the snapshot and labels older than the snapshot minus their delay. One row
group per (snapshot, entity type); entities that did not exist yet at a snapshot are skipped.

Next-item projects (layout ``pair_bias``): the entity's vector gets a trailing 1 and the item's
its head bias, so ``dot(entity vector, item vector)`` is exactly the deep model's pair score --
what a ranker reads from the plan's two embedding keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from offline.data.sources import split_instants
from offline.data.spec import NextItemTask, Project
from offline.datasets.base import NS_PER_DAY, RelationalDataset
from offline.embeddings import embedding_schema
from offline.models.train import DeepModel
from offline.relgraph.graph import build_graph


def snapshot_times(project: Project, ds: RelationalDataset, every_days: float = 1, first_day: int = 1,
                   last_day: int | None = None) -> np.ndarray:
    """Midnights day0 + d (d from first_day; default up to the midnight after the last row)."""
    inst = split_instants(project, ds)
    if last_day is None:
        last_day = int((inst["data_end_ns"] - inst["day0_ns"]) // NS_PER_DAY) + 1
    step = int(every_days * NS_PER_DAY)
    return np.arange(inst["day0_ns"] + first_day * NS_PER_DAY, inst["day0_ns"] + last_day * NS_PER_DAY + 1, step,
                     dtype=np.int64)


def write_embeddings(model: DeepModel, project: Project, ds: RelationalDataset, path: str | Path,
                     snapshots_ns: np.ndarray, entity_types: tuple[str, ...] | None = None,
                     batch_size: int = 2048, progress: bool = True, extra_meta: dict | None = None) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    path = Path(path)
    g = build_graph(ds)
    feats = model.features(ds, g)
    types = tuple(entity_types or project.embedding_entity_types)
    for t in types:
        if g.primary_keys.get(t) is None:
            raise ValueError(f"embed: {t} has no primary key; embedding keys must point at entity tables")
    pair = pair_columns(project, g)
    dim = model.net.cfg.embedding_dim + (1 if pair else 0)
    snapshots_ns = np.unique(np.asarray(snapshots_ns, np.int64))
    meta = {"format": "relstream-embeddings/1", "dim": dim, "entity_types": list(types),
            "label_delay_ns": max([d for t in g.label_delays_ns.values() for d in t.values()], default=0),
            "snapshot_times": snapshots_ns.tolist(), "project": project.name,
            "layout": "pair_bias" if pair else "embedding",
            "model": {"class": type(model.net).__name__, "config": model.net.cfg.to_dict()},
            "train_config": model.cfg.to_dict(), **(extra_meta or {})}
    schema = embedding_schema(dim).with_metadata({"relstream": json.dumps(meta)})
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for snap in tqdm(snapshots_ns, desc="embed snapshots", disable=not progress, unit="snapshot"):
            for t in types:
                ent = np.arange(g.num_nodes[t])
                ent = ent[g.visible(t, ent, np.full(len(ent), snap))]
                emb = model.embed(g, feats, t, ent, np.full(len(ent), snap, np.int64), batch_size)
                if pair:
                    emb = np.concatenate([emb, _last_column(model, pair.get(t), emb)], 1)
                writer.write_table(pa.Table.from_arrays([
                    pa.array(np.full(len(ent), t, dtype=object), pa.string()),
                    pa.array(g.primary_keys[t][ent], pa.int64()),
                    pa.array(np.full(len(ent), snap, np.int64), pa.int64()),
                    pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim),
                ], schema=schema))
                rows += len(ent)
    meta.update(rows=rows, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0)
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def pair_columns(project: Project, g) -> dict[str, str | None]:
    """{entity type: None (trailing 1), item type: task name (trailing bias)} of the first
    next-item task, or {} when the project has none."""
    for task in project.tasks:
        if isinstance(task, NextItemTask):
            return {task.entity: None, g.link(task.facts, task.item).target: task.name}
    return {}


def _last_column(model: DeepModel, task: str | None, emb: np.ndarray) -> np.ndarray:
    if task is None:
        return np.ones((len(emb), 1), np.float32)
    import torch

    with torch.no_grad():
        bias = model.net.head(task, torch.from_numpy(emb).to(model.cfg.device)).cpu().numpy()
    return bias.astype(np.float32)[:, None]
