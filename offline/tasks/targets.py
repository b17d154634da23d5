"""Targets of the spec's task kinds, computed on a :class:`RelGraph`.

* ``entity_aggregate``: per (entity, t): EXISTS / COUNT of linked fact rows matching the filter
  in [t, t + horizon);
* ``fact_label``: per fact row at its own time: the label value;
* ``next_item``: per (entity, t): the item rows linked through fact rows in [t, t + horizon).

Ground truth, whatever the graph: a trainer must only read targets whose every row was known at
its training instant (its graph is built from ``dataset.upto(T)`` and its target windows end at
``T - label delay``, see :mod:`offline.models.train`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from offline.data.spec import EntityAggregateTask, FactLabelTask, NextItemTask, Project
from offline.datasets.base import RelationalDataset
from offline.relgraph.graph import RelGraph


@dataclass
class Samples:
    """Seed rows of one node type with seed times and targets."""

    ntype: str
    rows: np.ndarray
    time: np.ndarray
    y: np.ndarray

    def take(self, idx) -> "Samples":
        return Samples(self.ntype, self.rows[idx], self.time[idx], self.y[idx])

    def __len__(self) -> int:
        return len(self.rows)


def seed_table(task) -> str:
    return task.table if isinstance(task, FactLabelTask) else task.entity


def _filter_mask(ds: RelationalDataset, task: EntityAggregateTask) -> np.ndarray:
    df = ds.table(task.facts)
    mask = np.ones(len(df), bool)
    for col, value in task.filter.items():
        vals = df[col]
        if isinstance(vals.dtype, pd.api.extensions.ExtensionDtype):
            vals = vals.astype(object).where(vals.notna(), None)
        mask &= (vals == value).to_numpy(bool)
    return mask


def entity_aggregate(project: Project, ds: RelationalDataset, g: RelGraph, task: EntityAggregateTask,
                     snapshots_ns: np.ndarray) -> Samples:
    link = g.link(task.facts, project.link_column(task.facts, task.entity, task.via))
    cum = np.concatenate([[0], np.cumsum(_filter_mask(ds, task)[link.row])])
    n = g.num_nodes[task.entity]
    rows = np.tile(np.arange(n), len(snapshots_ns))
    at = np.repeat(np.asarray(snapshots_ns, np.int64), n)
    keep = g.visible(task.entity, rows, at)
    rows, at = rows[keep], at[keep]
    count = cum[link.position(rows, at + task.horizon.ns)] - cum[link.position(rows, at)]
    y = (count > 0).astype(np.float32) if task.aggregate == "exists" else count.astype(np.float32)
    return Samples(task.entity, rows, at, y)


def fact_labels(g: RelGraph, task: FactLabelTask, lo_ns: int, hi_ns: int) -> Samples:
    t = g.node_time[task.table]
    rows = np.flatnonzero((t >= lo_ns) & (t < hi_ns))
    return Samples(task.table, rows, t[rows], g.label_columns[task.table][task.label][rows].astype(np.float32))


@dataclass
class ItemPairs:
    """(entity row, t, item row) positive pairs of a next-item task."""

    entity: np.ndarray
    time: np.ndarray
    item: np.ndarray

    def __len__(self) -> int:
        return len(self.entity)


def next_item_pairs(project: Project, g: RelGraph, task: NextItemTask, snapshots_ns: np.ndarray) -> ItemPairs:
    """Distinct (entity, item) pairs per snapshot t with a fact row in [t, t + horizon)."""
    via = project.link_column(task.facts, task.entity, task.via)
    ent = g.link(task.facts, via).target_row
    item = g.link(task.facts, task.item).target_row
    times = g.node_time[task.facts]
    parts = []
    for t in np.asarray(snapshots_ns, np.int64):
        sel = (times >= t) & (times < t + task.horizon.ns)
        pairs = np.unique(np.stack([ent[sel], item[sel]], 1), axis=0)
        parts.append((pairs[:, 0], np.full(len(pairs), t, np.int64), pairs[:, 1]))
    if not parts:
        z = np.zeros(0, np.int64)
        return ItemPairs(z, z, z)
    return ItemPairs(*(np.concatenate([p[i] for p in parts]) for i in range(3)))


def item_popularity(project: Project, g: RelGraph, task: NextItemTask, lo_ns: int, hi_ns: int) -> np.ndarray:
    """Fact rows per item row in [lo, hi)."""
    times = g.node_time[task.facts]
    sel = (times >= lo_ns) & (times < hi_ns)
    link = g.link(task.facts, task.item)
    return np.bincount(link.target_row[sel], minlength=g.num_nodes[link.target])


def recall_at_k(scores: np.ndarray, candidates: np.ndarray, truth: list[set], k: int) -> float:
    """Mean over entities with >= 1 true item of |top-k candidates ∩ truth| / |truth|."""
    top = candidates[np.argsort(-scores, axis=1)[:, :k]]
    vals = [len(set(top[i].tolist()) & s) / len(s) for i, s in enumerate(truth) if s]
    return float(np.mean(vals)) if vals else float("nan")
