"""The project's deep model at request time: the path distillation replaces, kept as a baseline.

Each scored fact row is seeded at its own time through the generic sampler on the graph of the
whole data (:mod:`offline.relgraph`): rows strictly before the seed time only, and a label only
when its row is older than the seed time minus that label's delay (the row's own label never).

* If the project trained a ``fact_label`` base task on the serving fact table and label, its
  head scores the row's embedding directly.
* Otherwise a small head is fitted on frozen features of the train period: the row's embedding,
  the embeddings of the entities its foreign keys reference (seeded at the same time) and the
  logits of the base-task heads on those entities.

The deep model is never trained here: ``relstream offline train-deep`` wrote it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from offline.data.spec import FactLabelTask, Project
from offline.datasets.base import RelationalDataset
from offline.models.train import DeepModel
from offline.relgraph.graph import build_graph
from offline.relgraph.sampler import SamplerConfig, sample
from offline.tasks.targets import seed_table


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 64
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 1024
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class FrozenHead(nn.Module):
    def __init__(self, d_in: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def serving_head_task(project: Project, table: str, label: str) -> str | None:
    """The base task whose head scores the serving label of ``table`` directly, if trained."""
    for task in project.tasks:
        if isinstance(task, FactLabelTask) and task.table == table and task.label == label:
            return task.name
    return None


class DeepRequestScorer:
    """Scores rows of ``table`` (row numbers of the dataset's frame) at their own times."""

    def __init__(self, model: DeepModel, project: Project, ds: RelationalDataset, table: str, label: str):
        self.model, self.table = model, table
        self.graph = build_graph(ds)
        self.feats = model.features(ds, self.graph)
        self.task = serving_head_task(project, table, label)
        trained = set(model.net.arch["heads"])
        if self.task is not None and self.task not in trained:
            raise ValueError(f"base_tasks {self.task}: the deep model has no head for it (retrain with "
                             f"`relstream offline train-deep`)")
        # frozen-feature path: the entities the row references, and the base-task heads on them
        self.links = [link for link in self.graph.links if link.table == table
                      and self.graph.primary_keys[link.target] is not None]
        self.entity_heads = {link.target: [t.name for t in project.tasks if seed_table(t) == link.target
                                           and t.name in trained and not isinstance(t, FactLabelTask)]
                             for link in self.links}
        self.head: FrozenHead | None = None

    @classmethod
    def from_files(cls, deep_model: str | Path, project: Project, ds: RelationalDataset, table: str, label: str,
                   device: str = "cpu") -> "DeepRequestScorer":
        return cls(DeepModel.load(deep_model, device), project, ds, table, label)

    @property
    def needs_head(self) -> bool:
        return self.task is None

    @torch.no_grad()
    def encode(self, rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Head inputs of fact rows seeded at ``t``: the row's embedding, then (frozen-feature
        path) each referenced entity's embedding and base-task logits."""
        m, g = self.model, self.graph
        rows, t = np.asarray(rows, np.int64), np.asarray(t, np.int64)
        seeds: dict[str, tuple[list, list]] = {self.table: ([rows], [t])}
        where = []
        if self.needs_head:
            for link in self.links:
                r, ts = seeds.setdefault(link.target, ([], []))
                where.append((link.target, sum(len(x) for x in r)))
                r.append(link.target_row[rows])
                ts.append(t)
        batch = sample(g, self.feats, {k: (np.concatenate(r), np.concatenate(ts)) for k, (r, ts) in seeds.items()},
                       SamplerConfig(m.cfg.fanouts))
        out = m.net(batch.to(m.cfg.device))
        n = len(rows)
        parts = [out[self.table][:n]]
        for ntype, lo in where:
            e = out[ntype][lo:lo + n]
            parts.append(e)
            parts += [m.net.head(name, e)[:, None] for name in self.entity_heads[ntype]]
        return torch.cat(parts, 1).float().cpu().numpy()

    def encode_many(self, rows: np.ndarray, t: np.ndarray, batch_size: int = 2048, progress: bool = True) -> np.ndarray:
        parts = [self.encode(rows[lo:lo + batch_size], t[lo:lo + batch_size])
                 for lo in tqdm(range(0, len(rows), batch_size), desc="deep encode", disable=not progress,
                                unit="batch")]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    @torch.no_grad()
    def score_encoded(self, x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.asarray(x, np.float32)).to(self.model.cfg.device)
        if self.needs_head:
            if self.head is None:
                raise RuntimeError("deep scorer: no head yet (fit_head on the train period first)")
            logits = self.head(xt)
        else:
            logits = self.model.net.head(self.task, xt)
        return torch.sigmoid(logits).float().cpu().numpy()

    def score(self, rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self.score_encoded(self.encode(rows, t))

    def fit_head(self, x: np.ndarray, y: np.ndarray, cfg: HeadConfig = HeadConfig(), log=print) -> dict:
        """A small MLP on frozen features of the train period (projects without a fact-label head)."""
        dev = self.model.cfg.device
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        head = FrozenHead(x.shape[1], cfg.hidden).to(dev)
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
        xt = torch.from_numpy(np.asarray(x, np.float32)).to(dev)
        yt = torch.from_numpy(np.asarray(y, np.float32)).to(dev)
        t0, total = time.perf_counter(), 0.0
        for _ in range(cfg.epochs):
            head.train()
            perm = rng.permutation(len(x))
            total = 0.0
            for lo in range(0, len(x), cfg.batch_size):
                idx = torch.from_numpy(perm[lo:lo + cfg.batch_size]).to(dev)
                loss = nn.functional.binary_cross_entropy_with_logits(head(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
        head.eval()
        self.head = head
        log(f"deep head: {cfg.epochs} epochs on {len(x)} rows, last loss {total / max(len(x), 1):.4f}")
        return {"rows": int(len(x)), "epochs": cfg.epochs, "inputs": int(x.shape[1]),
                "final_loss": total / max(len(x), 1), "seconds": time.perf_counter() - t0, "config": cfg.to_dict()}

    def parameters(self) -> int:
        n = sum(p.numel() for p in self.model.net.parameters())
        return n + (sum(p.numel() for p in self.head.parameters()) if self.head is not None else 0)

    def save_head(self, path: str | Path) -> None:
        torch.save({"state_dict": self.head.state_dict(), "inputs": self.head.net[0].normalized_shape[0]}, path)
