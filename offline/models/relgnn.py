"""The deep model for any project: a temporal heterogeneous GNN over every table of the spec.

Per node type a :class:`ColumnEncoder` (its columns + seed-relative features) plus a learnable
encoding of the row's age relative to the seed time; then one ``SAGEConv`` per edge type and
layer (``HeteroConv``, mean aggregation, residual + LayerNorm), as RelBench's baseline; a
projection per node type to the entity embedding (what ``embed`` writes) and one head per task.

Trimmed message passing: layer i of L only needs messages into nodes within L-1-i hops of their
seed (nothing further can reach a seed), so other edges are dropped — same seed outputs, less work.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, SAGEConv

from offline.configs import RelGNNConfig
from offline.encoders import ColumnEncoder, TimeEncoder


class RelGNN(nn.Module):
    def __init__(self, cfg: RelGNNConfig, node_types: list[str], edge_types: list[tuple[str, str, str]],
                 numeric_width: dict[str, int], cardinalities: dict[str, list[int]], num_layers: int,
                 heads: dict[str, str]):
        """``heads``: task name -> node type whose seed embedding it reads ("pair" heads for
        next-item tasks read the entity and item embeddings and use only a per-item bias)."""
        super().__init__()
        self.cfg = cfg
        self.node_types, self.edge_types = list(node_types), [tuple(e) for e in edge_types]
        self.arch = {"node_types": self.node_types, "edge_types": [list(e) for e in self.edge_types],
                     "numeric_width": dict(numeric_width), "cardinalities": {k: list(v) for k, v in cardinalities.items()},
                     "num_layers": num_layers, "heads": dict(heads), "config": cfg.to_dict()}
        h = cfg.hidden
        self.encoders = nn.ModuleDict({t: ColumnEncoder(numeric_width[t], cardinalities[t], h) for t in node_types})
        self.time_enc = TimeEncoder(cfg.time_dim)
        self.time_proj = nn.ModuleDict({t: nn.Linear(cfg.time_dim, h) for t in node_types})
        self.convs = nn.ModuleList([
            HeteroConv({et: SAGEConv((h, h), h, aggr="mean") for et in self.edge_types}, aggr="sum")
            for _ in range(num_layers)])
        self.norms = nn.ModuleList([nn.ModuleDict({t: nn.LayerNorm(h) for t in node_types})
                                    for _ in range(num_layers)])
        self.dropout = nn.Dropout(cfg.dropout)
        self.project = nn.ModuleDict({t: nn.Linear(h, cfg.embedding_dim) for t in node_types})
        self.heads = nn.ModuleDict({name: nn.Linear(cfg.embedding_dim, 1) for name in heads})

    @classmethod
    def from_arch(cls, arch: dict) -> "RelGNN":
        return cls(RelGNNConfig(**arch["config"]), arch["node_types"], [tuple(e) for e in arch["edge_types"]],
                   arch["numeric_width"], arch["cardinalities"], arch["num_layers"], arch["heads"])

    def node_states(self, batch: HeteroData) -> dict[str, torch.Tensor]:
        present = [t for t in self.node_types if t in batch.node_types and batch[t].num_nodes]
        x = {t: self.encoders[t](batch[t].x, batch[t].cat)
             + self.time_proj[t](self.time_enc(batch[t].age_days)) for t in present}
        n_layers = len(self.convs)
        for i, (conv, norms) in enumerate(zip(self.convs, self.norms)):
            reach = n_layers - 1 - i
            edge_index = {}
            for et in self.edge_types:
                src, _, dst = et
                if src not in x or dst not in x or et not in batch.edge_types:
                    continue
                ei = batch[et].edge_index
                ei = ei[:, batch[dst].hop[ei[1]] <= reach]
                if ei.shape[1]:
                    edge_index[et] = ei
            if not edge_index:
                continue
            out = conv(x, edge_index)
            x = {t: norms[t](x[t] + self.dropout(torch.relu(out[t]))) if t in out else x[t] for t in x}
        return x

    def forward(self, batch: HeteroData) -> dict[str, torch.Tensor]:
        """{node type: seed embeddings [num_seeds, embedding_dim]}."""
        states = self.node_states(batch)
        return {t: self.project[t](states[t][:int(batch[t].num_seeds)]) for t in states if int(batch[t].num_seeds)}

    def head(self, task: str, emb: torch.Tensor) -> torch.Tensor:
        return self.heads[task](emb).squeeze(-1)
