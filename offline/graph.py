"""The temporal heterogeneous graph of a fraud dataset.

Entity nodes are ``customers`` and ``terminals`` (plan table names); every transaction is a
timestamped edge customer -> terminal carrying its amount (and its fraud label, which is only
ever read through the label-delay rules in :mod:`offline.sampler`). Edges are kept sorted by
time, and per entity type in a time-sorted CSR, so "the K most recent transactions of entity e
strictly before t" and "how many transactions of e fell in [a, b)" are single vectorised
``searchsorted`` calls over a composite (entity, time-rank) key — no pyg-lib needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import HeteroData

from offline.datasets.base import RelationalDataset
from offline.relgraph.graph import sorted_searchsorted

CUSTOMERS, TERMINALS = "customers", "terminals"
NODE_TYPES = (CUSTOMERS, TERMINALS)
# Message directions (source, relation, destination); one per direction of a transaction.
PAYS = (CUSTOMERS, "pays", TERMINALS)
PAID_BY = (TERMINALS, "paid_by", CUSTOMERS)
EDGE_TYPES = (PAYS, PAID_BY)
OTHER = {CUSTOMERS: TERMINALS, TERMINALS: CUSTOMERS}
INTO = {CUSTOMERS: PAID_BY, TERMINALS: PAYS}  # edge type whose messages arrive at a node type


@dataclass
class EntityCSR:
    """Edges of one entity type grouped by entity, time-sorted within each entity."""

    indptr: np.ndarray  # (n_entities + 1,)
    edge: np.ndarray  # (n_edges,) edge ids in (entity, time) order
    key: np.ndarray  # (n_edges,) entity * n_ranks + time rank, sorted
    cum_amount: np.ndarray  # (n_edges + 1,) float64 cumulative amount in CSR order
    cum_fraud: np.ndarray  # (n_edges + 1,) int64 cumulative labels in CSR order
    n_ranks: int

    def position(self, entity: np.ndarray, time_rank: np.ndarray) -> np.ndarray:
        """CSR position of the first edge of ``entity`` whose time rank is >= ``time_rank``:
        edges of the entity before it are exactly those strictly older than the instant."""
        return sorted_searchsorted(self.key, entity.astype(np.int64) * self.n_ranks + time_rank)


@dataclass
class TemporalGraph:
    """A bipartite temporal graph: every fact row is an edge source entity -> destination entity
    (fraud: customer -> terminal; recommendation: household -> product)."""

    node_ids: dict[str, np.ndarray]  # node type -> sorted entity ids (index = node index)
    edge_time: np.ndarray  # int64 ns, non-decreasing
    edge_src: np.ndarray  # node index into the source type
    edge_dst: np.ndarray  # node index into the destination type
    edge_amount: np.ndarray  # float32
    edge_fraud: np.ndarray  # int8 label; never read directly by features (see sampler)
    edge_tx_id: np.ndarray  # int64 fact row ids
    times: np.ndarray  # sorted distinct edge times (the rank table)
    csr: dict[str, EntityCSR]
    edge_types: tuple = EDGE_TYPES  # ((src, rel, dst), (dst, rev_rel, src))

    @property
    def node_types(self) -> tuple[str, str]:
        return (self.edge_types[0][0], self.edge_types[0][2])

    @property
    def edge_customer(self) -> np.ndarray:  # fraud naming
        return self.edge_src

    @property
    def edge_terminal(self) -> np.ndarray:
        return self.edge_dst

    def other(self, ntype: str) -> str:
        src, dst = self.node_types
        return dst if ntype == src else src

    def into(self, ntype: str) -> tuple:
        """The edge type whose messages arrive at ``ntype`` nodes."""
        return self.edge_types[1] if ntype == self.node_types[0] else self.edge_types[0]

    @property
    def num_nodes(self) -> dict[str, int]:
        return {t: len(ids) for t, ids in self.node_ids.items()}

    @property
    def num_edges(self) -> int:
        return len(self.edge_time)

    def endpoint(self, ntype: str) -> np.ndarray:
        return self.edge_src if ntype == self.node_types[0] else self.edge_dst

    def time_rank(self, t_ns: np.ndarray) -> np.ndarray:
        """Number of distinct edge times strictly before each instant."""
        return sorted_searchsorted(self.times, np.asarray(t_ns, np.int64))

    def node_index(self, ntype: str, entity_ids) -> np.ndarray:
        ids = self.node_ids[ntype]
        entity_ids = np.asarray(entity_ids, np.int64)
        idx = np.searchsorted(ids, entity_ids)
        bad = (idx >= len(ids)) | (ids[np.minimum(idx, len(ids) - 1)] != entity_ids)
        if bad.any():
            raise KeyError(f"{ntype}: unknown entity id {int(entity_ids[bad][0])}")
        return idx

    def to_hetero_data(self) -> HeteroData:
        """The whole graph as a PyG ``HeteroData`` (both message directions, times, amounts)."""
        data = HeteroData()
        for t, ids in self.node_ids.items():
            data[t].num_nodes = len(ids)
            data[t].entity_id = torch.from_numpy(ids)
        fwd, rev = self.edge_types
        ei = torch.from_numpy(np.stack([self.edge_src, self.edge_dst]))
        attr = torch.from_numpy(self.edge_amount)[:, None]
        tm = torch.from_numpy(self.edge_time)
        data[fwd].edge_index, data[fwd].edge_time, data[fwd].edge_attr = ei, tm, attr
        data[rev].edge_index, data[rev].edge_time, data[rev].edge_attr = ei.flip(0), tm, attr
        return data


def _entity_csr(entity: np.ndarray, n_entities: int, rank: np.ndarray, n_ranks: int,
                amount: np.ndarray, fraud: np.ndarray) -> EntityCSR:
    order = np.lexsort((np.arange(len(entity)), rank, entity))  # entity, then time, then edge id
    indptr = np.zeros(n_entities + 1, np.int64)
    np.cumsum(np.bincount(entity, minlength=n_entities), out=indptr[1:])
    cum_amount = np.concatenate([[0.0], np.cumsum(amount[order], dtype=np.float64)])
    cum_fraud = np.concatenate([[0], np.cumsum(fraud[order], dtype=np.int64)])
    key = entity[order].astype(np.int64) * n_ranks + rank[order]
    return EntityCSR(indptr, order.astype(np.int64), key, cum_amount, cum_fraud, n_ranks)


def build_bipartite_graph(facts, *, src: tuple[str, str, np.ndarray], dst: tuple[str, str, np.ndarray],
                          relation: tuple[str, str], time_column: str, id_column: str, amount_column: str,
                          label_column: str | None = None) -> TemporalGraph:
    """Fact table -> :class:`TemporalGraph`. ``src``/``dst`` are (node type, fact column, all
    entity ids); ``relation`` the names of the forward and reverse message directions."""
    if label_column is not None and str(facts[label_column].dtype) in ("Int8", "Int16", "Int32", "Int64"):
        # A dataset cut with upto(): masked labels are unknown -> never counted as positive.
        facts = facts.assign(**{label_column: facts[label_column].fillna(0).astype(np.int64)})
    facts = facts.sort_values([time_column, id_column], kind="stable")
    (src_type, src_col, src_ids), (dst_type, dst_col, dst_ids) = src, dst
    node_ids = {src_type: np.sort(np.asarray(src_ids, np.int64)), dst_type: np.sort(np.asarray(dst_ids, np.int64))}
    times_col = facts[time_column].to_numpy(np.int64)
    times = np.unique(times_col)
    rank = np.searchsorted(times, times_col)
    n_ranks = len(times) + 1
    label = (facts[label_column].to_numpy(np.int8) if label_column is not None
             else np.zeros(len(facts), np.int8))
    g = TemporalGraph(
        node_ids=node_ids, edge_time=times_col,
        edge_src=np.zeros(0, np.int64), edge_dst=np.zeros(0, np.int64),
        edge_amount=facts[amount_column].to_numpy(np.float32), edge_fraud=label,
        edge_tx_id=facts[id_column].to_numpy(np.int64), times=times, csr={},
        edge_types=((src_type, relation[0], dst_type), (dst_type, relation[1], src_type)),
    )
    g.edge_src = g.node_index(src_type, facts[src_col].to_numpy(np.int64))
    g.edge_dst = g.node_index(dst_type, facts[dst_col].to_numpy(np.int64))
    for t in g.node_types:
        g.csr[t] = _entity_csr(g.endpoint(t), len(node_ids[t]), rank, n_ranks, g.edge_amount, g.edge_fraud)
    return g


def build_graph(ds: RelationalDataset) -> TemporalGraph:
    """Fraud dataset (normalised tables) -> :class:`TemporalGraph` customers -> terminals."""
    return build_bipartite_graph(
        ds.table("transactions"),
        src=(CUSTOMERS, "customer_id", ds.table("customers")["customer_id"].to_numpy(np.int64)),
        dst=(TERMINALS, "terminal_id", ds.table("terminals")["terminal_id"].to_numpy(np.int64)),
        relation=(PAYS[1], PAID_BY[1]), time_column="tx_datetime", id_column="transaction_id",
        amount_column="tx_amount", label_column="tx_fraud")
