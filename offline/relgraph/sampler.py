"""Leak-free temporal sampling and seed-relative features on a :class:`RelGraph`.

The leakage rules, in this one place (tested for every schema in tests/offline/test_relgraph.py):

* a node other than the seed itself is in a seed's subgraph only if its row time is strictly
  before the seed time (static tables: always); the seed row (e.g. the transaction being scored)
  is given, and its own label is unknown (its time is not before its own seed time);
* a label value is a feature only if its row is older than ``seed time - the label's delay``
  (:meth:`RelationalDataset.label_known`'s rule), with a "known" flag beside it;
* activity aggregates of an entity count rows strictly before t, and label sums only rows older
  than ``t - delay``.

Subgraphs are disjoint per seed (a tree, as temporal samplers build): hop h expands every node of
hop h-1 along every edge type into it — the K_h most recent referencing rows before the seed time
(reverse of a foreign key) or the one referenced entity (forward). A row reached from an entity
is not expanded back to that same entity (it would only repeat the seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import HeteroData

from offline.datasets.base import NS_PER_DAY
from offline.encoders import TableEncoding
from offline.relgraph.graph import LinkIndex, RelGraph

ACTIVITY_DAYS = (1, 7, 30)  # windows of the per-link activity counts
LABEL_DAYS = (7, 30)  # windows of the known-label sums (ending at t - delay)


@dataclass(frozen=True)
class SamplerConfig:
    fanouts: tuple[int, ...] = (10, 10, 10)


class NodeFeatures:
    """Static encoded columns of every table (fitted on training rows) + the seed-relative
    features computed at sampling time."""

    def __init__(self, g: RelGraph, encodings: dict[str, TableEncoding], tables: dict):
        self.g = g
        self.encodings = encodings
        self.static = {}
        for t in g.node_types:
            num, cat, ts = encodings[t].transform(tables[t])
            if g.node_time[t] is not None:
                num = np.concatenate([num, _calendar(g.node_time[t])], 1)
            self.static[t] = (num, cat, ts)

    def width(self, ntype: str) -> int:
        """Width of the numeric block of ``ntype`` (static + seed-relative)."""
        return self.dynamic(ntype, np.zeros(1, np.int64), np.zeros(1, np.int64)).shape[1] + \
            self.static[ntype][0].shape[1]

    def dynamic(self, ntype: str, rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        g = self.g
        cols = []
        ts = self.static[ntype][2][rows]
        for j in range(ts.shape[1]):
            days = (t - ts[:, j]) / NS_PER_DAY
            cols.append(np.sign(days) * np.log1p(np.abs(days)))
        row_time = g.node_time[ntype]
        for label, values in g.label_columns[ntype].items():
            known = row_time[rows] < t - g.label_delays_ns[ntype][label]
            cols.append(np.where(known, values[rows], 0.0))
            cols.append(known.astype(np.float64))
        for link in g.links_into(ntype):
            cols.extend(_activity(g, link, rows, t))
        if not cols:
            return np.zeros((len(rows), 0), np.float32)
        return np.nan_to_num(np.stack(cols, 1)).astype(np.float32)

    def gather(self, ntype: str, rows: np.ndarray, t: np.ndarray):
        num, cat, _ = self.static[ntype]
        x = np.concatenate([num[rows], self.dynamic(ntype, rows, t)], 1)
        age = np.zeros(len(rows), np.float32) if self.g.node_time[ntype] is None else \
            ((t - self.g.node_time[ntype][rows]) / NS_PER_DAY).astype(np.float32)
        return x, cat[rows], age


def _calendar(t_ns: np.ndarray) -> np.ndarray:
    """Time of day (sin, cos), weekend and night (before 6:00) of each row's own time (UTC)."""
    secs = (t_ns // 1_000_000_000) % 86_400
    weekday = ((t_ns // NS_PER_DAY) + 3) % 7  # 1970-01-01 was a Thursday
    angle = 2 * np.pi * secs / 86_400
    return np.stack([np.sin(angle), np.cos(angle), weekday >= 5, secs < 6 * 3600], 1).astype(np.float32)


def _activity(g: RelGraph, link: LinkIndex, entity: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    """log counts of referencing rows in [t - d, t), days since the last (capped 30, /30), and per
    label: log sums and rates over [cut - d, cut) with cut = t - delay."""
    out = []
    end = link.position(entity, t)
    for days in ACTIVITY_DAYS:
        out.append(np.log1p(end - link.position(entity, t - days * NS_PER_DAY)))
    has = end > link.indptr[entity]
    last = np.where(has, g.node_time[link.table][link.row[np.maximum(end - 1, 0)]], t - 30 * NS_PER_DAY)
    out.append(np.clip((t - last) / (30 * NS_PER_DAY), 0, 1))
    for label, cum in link.cum_labels.items():
        cut = t - g.label_delays_ns[link.table][label]
        b = link.position(entity, cut)
        for days in LABEL_DAYS:
            a = link.position(entity, cut - days * NS_PER_DAY)
            s = cum[b] - cum[a]
            out.append(np.log1p(np.maximum(s, 0)))
            out.append(np.where(b > a, s / np.maximum(b - a, 1), 0.0))
    return out


def recent_rows(link: LinkIndex, entity: np.ndarray, t: np.ndarray, k: int):
    """The (at most) k most recent rows referencing each entity strictly before its t.
    Returns (owner, row): ``owner`` indexes the query, most recent first per owner."""
    end = link.position(entity, t)
    owner, pos = last_positions(np.maximum(link.indptr[entity], end - k), end)
    return owner, link.row[pos]


def last_positions(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every position in [start[i], end[i]) of each query i, newest (end - 1) first:
    (owner = i per position, position) — the gather of "most recent K" over a time-sorted CSR."""
    counts = end - start
    owner = np.repeat(np.arange(len(start)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.repeat(end, counts) - 1 - offsets


def sample(g: RelGraph, features: NodeFeatures, seeds: dict[str, tuple[np.ndarray, np.ndarray]],
           cfg: SamplerConfig) -> HeteroData:
    """Disjoint temporal subgraphs around ``{node type: (rows, seed times ns)}``.

    The first ``num_seeds`` nodes of each type are its seeds, in input order; every node carries
    ``n_id`` (row), ``seed_time``, ``hop``, ``x`` (numeric block), ``cat`` (category codes) and
    ``age_days`` (seed time - row time); ``edge_index`` has messages flowing towards the seeds."""
    types = g.node_types
    unknown = set(seeds) - set(types)
    if unknown:
        raise KeyError(f"seeds: unknown node type(s) {sorted(unknown)}; graph has {list(types)}")
    empty = np.zeros(0, np.int64)
    rows = {t: [] for t in types}
    times = {t: [] for t in types}
    hops = {t: [] for t in types}
    count = dict.fromkeys(types, 0)
    edges = {et: [] for et in g.edge_types}
    num_seeds = {}
    # frontier: type -> (rows, seed times, local index, the link column it arrived by reverse, or "")
    frontier = {}
    for t in types:
        r, ts = seeds.get(t, (empty, empty))
        r, ts = np.asarray(r, np.int64), np.asarray(ts, np.int64)
        if len(r) != len(ts):
            raise ValueError(f"seeds[{t}]: {len(r)} rows but {len(ts)} seed times")
        rows[t].append(r)
        times[t].append(ts)
        hops[t].append(np.zeros(len(r), np.int64))
        frontier[t] = [(r, ts, np.arange(len(r)), None)]
        count[t] = num_seeds[t] = len(r)
    for hop, k in enumerate(cfg.fanouts, start=1):
        nxt = {t: [] for t in types}

        def add(ntype, new_rows, new_times, dst_local, et, came_by):
            local = count[ntype] + np.arange(len(new_rows))
            count[ntype] += len(new_rows)
            rows[ntype].append(new_rows)
            times[ntype].append(new_times)
            hops[ntype].append(np.full(len(new_rows), hop, np.int64))
            edges[et].append((local, dst_local))
            nxt[ntype].append((new_rows, new_times, local, came_by))

        for t in types:
            for r, ts, local, came_by in frontier[t]:
                if len(r) == 0:
                    continue
                for link in g.links:
                    if link.target == t and link.indptr is not None:
                        owner, src = recent_rows(link, r, ts, k)  # rows referencing these entities
                        add(link.table, src, ts[owner], local[owner], link.edge_type, link)
                    if link.table == t and link is not came_by:
                        ent = link.target_row[r]  # the entity each row references
                        ok = g.visible(link.target, ent, ts)
                        add(link.target, ent[ok], ts[ok], local[ok], link.reverse_edge_type, None)
        frontier = nxt
    data = HeteroData()
    for t in types:
        n_id = np.concatenate(rows[t]) if rows[t] else empty
        st = np.concatenate(times[t]) if times[t] else empty
        x, cat, age = features.gather(t, n_id, st)
        data[t].n_id = torch.from_numpy(n_id)
        data[t].seed_time = torch.from_numpy(st)
        data[t].hop = torch.from_numpy(np.concatenate(hops[t]) if hops[t] else empty)
        data[t].x = torch.from_numpy(x)
        data[t].cat = torch.from_numpy(cat)
        data[t].age_days = torch.from_numpy(age)
        data[t].num_seeds = num_seeds[t]
        data[t].num_nodes = len(n_id)
    for et, parts in edges.items():
        src = np.concatenate([p[0] for p in parts]) if parts else empty
        dst = np.concatenate([p[1] for p in parts]) if parts else empty
        data[et].edge_index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    return data
