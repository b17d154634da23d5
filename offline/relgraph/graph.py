"""The temporal heterogeneous graph of any relational dataset (RelBench style).

Every table is a node type and every row a node (fact rows included); every foreign key
``A.col -> B`` is a pair of edge types: ``(A, col, B)`` carries messages from the referencing
rows to the entity (an entity hears its K most recent rows strictly before the seed time) and
``(B, rev_col, A)`` from the entity to each row (one neighbour, visible when the entity existed
before the seed time). Per foreign key the referencing rows sit in a time-sorted CSR keyed by
(entity, time rank), so "most recent K before t" and "count / label sum in [a, b)" are one
``searchsorted`` each, vectorised over all seeds.

Rows are the dataset's row order; :func:`offline.data.sources.load_tables` sorts timed tables by
time, so a dataset cut with ``upto(t)`` keeps the same row numbers (a prefix) — what makes the
leakage tests able to compare a sample from the full graph with one from the cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from offline.datasets.base import RelationalDataset


def sorted_searchsorted(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """``np.searchsorted(side='left')``, faster on large random needles (queries in sorted order)."""
    needles = np.asarray(needles)
    if len(needles) < 4096:
        return np.searchsorted(haystack, needles, side="left")
    order = np.argsort(needles, kind="stable")
    out = np.empty(len(needles), np.int64)
    out[order] = np.searchsorted(haystack, needles[order], side="left")
    return out


def reverse_relation(column: str) -> str:
    return f"rev_{column}"


@dataclass
class LinkIndex:
    """Rows of ``table`` referencing ``target`` through ``column``: the forward map and, when
    ``table`` is timed, a per-entity time-sorted CSR with cumulative label sums."""

    table: str
    column: str
    target: str
    target_row: np.ndarray  # (rows of table,) row index in target
    indptr: np.ndarray | None = None  # (n_target + 1,)
    row: np.ndarray | None = None  # CSR position -> row of table
    key: np.ndarray | None = None  # entity * n_ranks + time rank, sorted
    times: np.ndarray | None = None  # sorted distinct times of table (rank table)
    cum_labels: dict[str, np.ndarray] = field(default_factory=dict)  # label -> (n + 1,) cumsum in CSR order

    @property
    def edge_type(self) -> tuple[str, str, str]:
        return (self.table, self.column, self.target)

    @property
    def reverse_edge_type(self) -> tuple[str, str, str]:
        return (self.target, reverse_relation(self.column), self.table)

    def position(self, entity: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
        """CSR position of the first row of ``entity`` at or after ``t_ns``: the rows of the
        entity before it are exactly those strictly older than the instant."""
        rank = sorted_searchsorted(self.times, np.asarray(t_ns, np.int64))
        return sorted_searchsorted(self.key, entity.astype(np.int64) * (len(self.times) + 1) + rank)


@dataclass
class RelGraph:
    node_types: tuple[str, ...]
    num_nodes: dict[str, int]
    node_time: dict[str, np.ndarray | None]  # int64 ns per row, None for static tables
    primary_keys: dict[str, np.ndarray | None]  # key value per row
    links: list[LinkIndex]
    label_columns: dict[str, dict[str, np.ndarray]]  # table -> label -> float64 values (NA -> 0)
    label_delays_ns: dict[str, dict[str, int]]

    @property
    def edge_types(self) -> list[tuple[str, str, str]]:
        return [e for link in self.links for e in (link.edge_type, link.reverse_edge_type)]

    def link(self, table: str, column: str) -> LinkIndex:
        for link in self.links:
            if link.table == table and link.column == column:
                return link
        raise KeyError(f"no link {table}.{column}")

    def links_into(self, ntype: str) -> list[LinkIndex]:
        """Links whose referencing rows are timed and point at ``ntype`` (its activity)."""
        return [link for link in self.links if link.target == ntype and link.indptr is not None]

    def row_of(self, ntype: str, key_values) -> np.ndarray:
        keys = self.primary_keys[ntype]
        order = np.argsort(keys, kind="stable")
        vals = np.asarray(key_values, np.int64)
        pos = np.searchsorted(keys[order], vals)
        pos = np.minimum(pos, len(keys) - 1)
        bad = keys[order][pos] != vals
        if bad.any():
            raise KeyError(f"{ntype}: unknown key {int(vals[bad][0])}")
        return order[pos]

    def visible(self, ntype: str, rows: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
        """Rows that existed strictly before ``t_ns`` (static tables always)."""
        times = self.node_time[ntype]
        if times is None:
            return np.ones(len(rows), bool)
        return times[rows] < t_ns


def build_graph(ds: RelationalDataset) -> RelGraph:
    node_time, pks, label_cols, label_delays = {}, {}, {}, {}
    for name, m in ds.meta.items():
        df = ds.table(name)
        node_time[name] = df[m.time_column].to_numpy(np.int64) if m.time_column else None
        pks[name] = df[m.primary_key].to_numpy(np.int64) if m.primary_key else None
        # a dataset cut with upto() holds masked (NA) labels: unknown, never counted
        label_cols[name] = {c: df[c].astype("Float64").fillna(0).to_numpy(np.float64) for c in m.label_columns}
        label_delays[name] = {c: int(m.label_delays_ns.get(c, 0)) for c in m.label_columns}
    links = []
    for name, m in ds.meta.items():
        for col, target in m.foreign_keys.items():
            target_keys = pks[target]
            order = np.argsort(target_keys, kind="stable")
            vals = ds.table(name)[col].to_numpy(np.int64)
            target_row = order[np.searchsorted(target_keys[order], vals)]
            link = LinkIndex(name, col, target, target_row.astype(np.int64))
            if node_time[name] is not None:
                _build_csr(link, node_time[name], len(target_keys), label_cols[name])
            links.append(link)
    return RelGraph(tuple(ds.meta), {n: len(ds.table(n)) for n in ds.meta}, node_time, pks, links,
                    label_cols, label_delays)


def _build_csr(link: LinkIndex, times_col: np.ndarray, n_target: int, labels: dict[str, np.ndarray]) -> None:
    times = np.unique(times_col)
    rank = np.searchsorted(times, times_col)
    entity = link.target_row
    order = np.lexsort((np.arange(len(entity)), rank, entity))  # entity, time, row
    link.indptr = np.zeros(n_target + 1, np.int64)
    np.cumsum(np.bincount(entity, minlength=n_target), out=link.indptr[1:])
    link.row = order.astype(np.int64)
    link.key = entity[order].astype(np.int64) * (len(times) + 1) + rank[order]
    link.times = times
    link.cum_labels = {c: np.concatenate([[0.0], np.cumsum(v[order])]) for c, v in labels.items()}
