"""Temporal most-recent-K neighbour sampling and leak-free features, fully vectorised.

For a seed (entity, seed time t) hop 1 takes the K1 most recent transactions of the entity
strictly before t, each bringing the counter-party entity (a fresh node per edge: subgraphs are
disjoint per seed, as in temporal sampling); hop 2 takes the K2 most recent transactions of
each of those, again strictly before the *seed's* time t; and so on. Each hop is one
``searchsorted`` over the entity's time-sorted CSR.

Label feedback delay: a transaction's fraud label is visible to features only if the
transaction is older than ``t - label_delay`` (``t`` = the seed time of the subgraph it is in).
Node features are windowed counts strictly before t and known-fraud counts strictly before
``t - label_delay`` — the same rules the online windows and the LightGBM features follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import HeteroData

from offline.datasets.base import NS_PER_DAY, NS_PER_SECOND
from offline.graph import TemporalGraph
from offline.relgraph.sampler import last_positions

NODE_FEATURES = (
    "log_count_1d", "log_count_7d", "log_count_30d", "log_mean_amount_30d", "days_since_last_30",
    "log_known_fraud_7d", "log_known_fraud_30d", "known_fraud_rate_7d", "known_fraud_rate_30d",
    "is_source_type",  # 1 for the fact's source entity (customers / households)
)
EDGE_FEATURES = (
    "log_amount", "known_fraud", "label_known", "tod_sin", "tod_cos", "weekend", "night",
)


@dataclass(frozen=True)
class SamplerConfig:
    fanouts: tuple[int, ...] = (10, 10)
    label_delay_ns: int = 7 * NS_PER_DAY


def recent_edges(g: TemporalGraph, ntype: str, entity: np.ndarray, seed_time: np.ndarray, k: int):
    """The (at most) k most recent edges of each entity strictly before its seed time.

    Returns (owner, edge): ``owner[i]`` indexes the query row, ``edge[i]`` is a global edge id;
    most recent first within each owner."""
    csr = g.csr[ntype]
    end = csr.position(entity, g.time_rank(seed_time))
    owner, pos = last_positions(np.maximum(csr.indptr[entity], end - k), end)
    return owner, csr.edge[pos]


def window_sums(g: TemporalGraph, ntype: str, entity: np.ndarray, lo_ns: np.ndarray, hi_ns: np.ndarray):
    """(count, amount sum, fraud sum) of each entity's edges with lo <= time < hi."""
    csr = g.csr[ntype]
    a = csr.position(entity, g.time_rank(lo_ns))
    b = csr.position(entity, g.time_rank(hi_ns))
    b = np.maximum(a, b)
    return b - a, csr.cum_amount[b] - csr.cum_amount[a], csr.cum_fraud[b] - csr.cum_fraud[a]


def node_features(g: TemporalGraph, ntype: str, entity: np.ndarray, t: np.ndarray, label_delay_ns: int) -> np.ndarray:
    """Node features of entities as of instants ``t`` (data < t, labels < t - delay)."""
    t = np.asarray(t, np.int64)
    cols = []
    for days in (1, 7, 30):
        c, s, _ = window_sums(g, ntype, entity, t - days * NS_PER_DAY, t)
        cols.append(np.log1p(c))
        if days == 30:
            cols.append(np.log1p(np.where(c > 0, s / np.maximum(c, 1), 0.0)))
    # Days since the last transaction (capped at 30; 1.0 = none in 30 days).
    csr = g.csr[ntype]
    end = csr.position(entity, g.time_rank(t))
    has = end > csr.indptr[entity]
    last = np.where(has, g.edge_time[csr.edge[np.maximum(end - 1, 0)]], t - 30 * NS_PER_DAY)
    cols.append(np.clip((t - last) / (30 * NS_PER_DAY), 0, 1))
    label_cut = t - label_delay_ns
    counts, frauds = [], []
    for days in (7, 30):
        c, _, f = window_sums(g, ntype, entity, label_cut - days * NS_PER_DAY, label_cut)
        counts.append(c)
        frauds.append(f)
        cols.append(np.log1p(f))
    for c, f in zip(counts, frauds):
        cols.append(np.where(c > 0, f / np.maximum(c, 1), 0.0))
    cols.append(np.full(len(entity), 1.0 if ntype == g.node_types[0] else 0.0))
    return np.stack(cols, axis=1).astype(np.float32)


class SnapshotFeatures:
    """Node features of every entity precomputed at fixed snapshot instants (e.g. midnights).

    Training and embedding seeds sit on snapshot instants, and every node of a seed's subgraph
    is featurised at the seed's time, so features become a gather instead of ~12 searchsorted
    calls per node. Lookups at other instants fall back to :func:`node_features`; both paths
    give identical values (tested)."""

    def __init__(self, g: TemporalGraph, snapshot_times_ns, label_delay_ns: int, progress: bool = False):
        self.times = np.unique(np.asarray(snapshot_times_ns, np.int64))
        self.label_delay_ns = int(label_delay_ns)
        self.tables = {}
        for t in g.node_types:
            n = g.num_nodes[t]
            ent = np.tile(np.arange(n), len(self.times))
            at = np.repeat(self.times, n)
            self.tables[t] = node_features(g, t, ent, at, self.label_delay_ns).reshape(len(self.times), n, -1)

    def lookup(self, g: TemporalGraph, ntype: str, entity: np.ndarray, t: np.ndarray, label_delay_ns: int) -> np.ndarray:
        if label_delay_ns != self.label_delay_ns:
            raise ValueError(f"label_delay_ns: features were cached for {self.label_delay_ns}, asked for {label_delay_ns}")
        pos = np.minimum(np.searchsorted(self.times, t), len(self.times) - 1)
        if len(t) and np.all(self.times[pos] == t):
            return self.tables[ntype][pos, entity]
        return node_features(g, ntype, entity, t, label_delay_ns)


def edge_features(g: TemporalGraph, edge: np.ndarray, seed_time: np.ndarray, label_delay_ns: int):
    """Per-edge features relative to the seed time, and the edge age in days."""
    et = g.edge_time[edge]
    known = et < seed_time - label_delay_ns
    fraud = np.where(known, g.edge_fraud[edge], 0)
    secs = (et // NS_PER_SECOND) % 86_400
    weekday = ((et // NS_PER_DAY) + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    angle = 2 * np.pi * secs / 86_400
    x = np.stack([
        np.log1p(g.edge_amount[edge]) / 5.0, fraud, known, np.sin(angle), np.cos(angle),
        weekday >= 5, secs <= 6 * 3600,
    ], axis=1).astype(np.float32)
    age_days = ((seed_time - et) / NS_PER_DAY).astype(np.float32)
    return x, age_days


def sample_subgraphs(g: TemporalGraph, seeds: dict[str, tuple[np.ndarray, np.ndarray]],
                     cfg: SamplerConfig = SamplerConfig(),
                     features: SnapshotFeatures | None = None) -> HeteroData:
    """Disjoint temporal subgraphs around seeds ``{ntype: (node index, seed time ns)}``.

    In the result the first ``num_seeds`` nodes of each type are its seeds (in input order);
    every node carries ``n_id`` (global index), ``seed_time``, ``hop`` (distance to its seed)
    and ``x``; every edge
    ``edge_index`` (messages flow towards the seeds), ``edge_attr``, ``edge_age_days``,
    ``edge_time`` and ``e_id`` (global edge id = row of the time-sorted transactions)."""
    node_types = g.node_types
    unknown = set(seeds) - set(node_types)
    if unknown:
        raise KeyError(f"seeds: unknown node type(s) {sorted(unknown)}; graph has {list(node_types)}")
    nodes = {t: [np.zeros(0, np.int64)] for t in node_types}
    times = {t: [np.zeros(0, np.int64)] for t in node_types}
    hops = {t: [np.zeros(0, np.int64)] for t in node_types}  # distance to the node's seed
    count = {t: 0 for t in node_types}
    edges = {t: [] for t in node_types}  # keyed by destination type
    frontier = {}
    num_seeds = {}
    for t in node_types:
        idx, ts = seeds.get(t, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        idx, ts = np.asarray(idx, np.int64), np.asarray(ts, np.int64)
        if len(idx) != len(ts):
            raise ValueError(f"seeds[{t}]: {len(idx)} nodes but {len(ts)} seed times")
        nodes[t].append(idx)
        times[t].append(ts)
        hops[t].append(np.zeros(len(idx), np.int64))
        frontier[t] = (idx, ts, np.arange(len(idx)))
        count[t] = num_seeds[t] = len(idx)
    for hop, k in enumerate(cfg.fanouts, start=1):
        nxt = {t: [] for t in node_types}
        for t in node_types:
            idx, ts, local = frontier[t]
            if len(idx) == 0:
                continue
            owner, e = recent_edges(g, t, idx, ts, k)
            other = g.other(t)
            new_idx = g.endpoint(other)[e]
            new_local = count[other] + np.arange(len(e))
            count[other] += len(e)
            nodes[other].append(new_idx)
            times[other].append(ts[owner])
            hops[other].append(np.full(len(e), hop, np.int64))
            edges[t].append((new_local, local[owner], e, ts[owner]))
            nxt[other].append((new_idx, ts[owner], new_local))
        frontier = {
            t: tuple(np.concatenate([p[i] for p in nxt[t]]) if nxt[t] else np.zeros(0, np.int64) for i in range(3))
            for t in node_types
        }
    data = HeteroData()
    for t in node_types:
        n_id = np.concatenate(nodes[t])
        st = np.concatenate(times[t])
        data[t].n_id = torch.from_numpy(n_id)
        data[t].seed_time = torch.from_numpy(st)
        data[t].hop = torch.from_numpy(np.concatenate(hops[t]))
        feats = (features.lookup(g, t, n_id, st, cfg.label_delay_ns) if features is not None
                 else node_features(g, t, n_id, st, cfg.label_delay_ns))
        data[t].x = torch.from_numpy(np.ascontiguousarray(feats))
        data[t].num_seeds = num_seeds[t]
        data[t].num_nodes = len(n_id)
    for dst in node_types:
        et = g.into(dst)
        parts = edges[dst]
        if parts:
            src_l, dst_l, e, ts = (np.concatenate([p[i] for p in parts]) for i in range(4))
        else:
            src_l = dst_l = e = ts = np.zeros(0, np.int64)
        x, age = edge_features(g, e, ts, cfg.label_delay_ns)
        data[et].edge_index = torch.from_numpy(np.stack([src_l, dst_l]).astype(np.int64))
        data[et].edge_attr = torch.from_numpy(x)
        data[et].edge_age_days = torch.from_numpy(age)
        data[et].edge_time = torch.from_numpy(g.edge_time[e])
        data[et].e_id = torch.from_numpy(e.astype(np.int64))
    return data


def future_fraud_labels(g: TemporalGraph, ntype: str, entity: np.ndarray, t: np.ndarray, horizon_ns: int) -> np.ndarray:
    """Base-task target: does the entity see at least one fraud in ``[t, t + horizon)``?
    (Ground truth; a trainer must only use targets whose window + delay ended before its cutoff.)"""
    _, _, f = window_sums(g, ntype, entity, np.asarray(t, np.int64), np.asarray(t, np.int64) + horizon_ns)
    return (f > 0).astype(np.float32)
