"""The deep model at request time: the path the seeds call too slow, kept as a baseline.

Per request (a transaction at anchor time T) :class:`DeepRequestScorer` samples the temporal
subgraphs of the transaction's customer and terminal as of T (stage-1 sampler: edges strictly
before T, fraud labels only when older than T - label delay), runs the deep GNN on them and feeds
both seed representations plus the transaction's own features to a small transaction head.
The GNN is the stage-1 model, frozen; the head is trained on the serving task (fraud on each
transaction) on the same train period as the distilled model.

The scorer benchmark compares its latency and accuracy with the distilled model served by
Triton: ``DeepRequestScorer.from_files(deep_model.pt, deep_head.pt, dataset).score_rows(rows)``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from offline.datasets.base import NS_PER_DAY, NS_PER_SECOND, RelationalDataset
from offline.graph import CUSTOMERS, TERMINALS, TemporalGraph, build_graph
from offline.sampler import sample_subgraphs
from offline.train_deep import load_model

TX_FEATURES = ("log_amount", "tod_sin", "tod_cos", "weekend", "night")


def transaction_features(amount: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
    secs = (np.asarray(t_ns, np.int64) // NS_PER_SECOND) % 86_400
    weekday = ((np.asarray(t_ns, np.int64) // NS_PER_DAY) + 3) % 7  # 1970-01-01 was a Thursday
    angle = 2 * np.pi * secs / 86_400
    return np.stack([np.log1p(np.maximum(np.asarray(amount, np.float64), 0)) / 5.0, np.sin(angle), np.cos(angle),
                     weekday >= 5, secs <= 6 * 3600], axis=1).astype(np.float32)


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 64
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 1024
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TransactionHead(nn.Module):
    """[customer emb, terminal emb, their base-task logits, transaction features] -> fraud logit."""

    def __init__(self, emb_dim: int, hidden: int = 64):
        super().__init__()
        d_in = 2 * emb_dim + 2 + len(TX_FEATURES)
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class DeepRequestScorer:
    """Deep GNN + transaction head, sampling each request's subgraph as of its anchor time."""

    def __init__(self, gnn, train_cfg, head: TransactionHead | None, graph: TemporalGraph, device: str = "cpu"):
        self.gnn = gnn.to(device).eval()
        self.train_cfg = train_cfg
        self.head = head.to(device).eval() if head is not None else None
        self.graph = graph
        self.device = device

    @classmethod
    def from_files(cls, deep_model_path: str | Path, head_path: str | Path | None, dataset: RelationalDataset,
                   device: str = "cpu") -> "DeepRequestScorer":
        gnn, cfg = load_model(deep_model_path, device)
        head = None
        if head_path is not None:
            state = torch.load(head_path, map_location=device, weights_only=True)
            head = TransactionHead(int(state["emb_dim"]), int(state["hidden"]))
            head.load_state_dict(state["state_dict"])
        return cls(gnn, cfg, head, build_graph(dataset), device)

    def save_head(self, path: str | Path, hidden: int) -> None:
        torch.save({"state_dict": self.head.state_dict(), "emb_dim": self.gnn.cfg.embedding_dim, "hidden": hidden},
                   path)

    @torch.no_grad()
    def encode(self, customer_ids, terminal_ids, amounts, anchor_ns) -> np.ndarray:
        """Head inputs for transactions: one GNN pass over both entities' subgraphs as of T."""
        g = self.graph
        t = np.asarray(anchor_ns, np.int64)
        seeds = {CUSTOMERS: (g.node_index(CUSTOMERS, customer_ids), t),
                 TERMINALS: (g.node_index(TERMINALS, terminal_ids), t)}
        batch = sample_subgraphs(g, seeds, self.train_cfg.sampler)
        if self.device != "cpu":
            batch = batch.to(self.device)
        out = self.gnn(batch)
        (ec, lc), (et, lt) = out[CUSTOMERS], out[TERMINALS]
        x = torch.cat([ec, et, lc[:, None], lt[:, None],
                       torch.from_numpy(transaction_features(amounts, t)).to(ec.device)], dim=1)
        return x.float().cpu().numpy()

    def encode_many(self, customer_ids, terminal_ids, amounts, anchor_ns, batch_size: int = 2048,
                    progress: bool = True) -> np.ndarray:
        n = len(customer_ids)
        parts = []
        for lo in tqdm(range(0, n, batch_size), desc="deep encode", disable=not progress, unit="batch"):
            sl = slice(lo, lo + batch_size)
            parts.append(self.encode(np.asarray(customer_ids)[sl], np.asarray(terminal_ids)[sl],
                                     np.asarray(amounts)[sl], np.asarray(anchor_ns)[sl]))
        return np.concatenate(parts) if parts else np.zeros((0, 2 * self.gnn.cfg.embedding_dim + 2 + len(TX_FEATURES)))

    @torch.no_grad()
    def score_encoded(self, x: np.ndarray) -> np.ndarray:
        if self.head is None:
            raise RuntimeError("deep scorer has no transaction head: train one with fit_head()")
        return torch.sigmoid(self.head(torch.from_numpy(x).to(self.device))).float().cpu().numpy()

    def score_rows(self, rows: Sequence[Mapping]) -> np.ndarray:
        """Fraud probabilities for fact rows (customer_id, terminal_id, tx_amount, tx_datetime as anchor)."""
        cust = np.array([int(r["customer_id"]) for r in rows], np.int64)
        term = np.array([int(r["terminal_id"]) for r in rows], np.int64)
        amount = np.array([float(r["tx_amount"]) for r in rows], np.float64)
        anchor = np.array([int(r.get("anchor_time", r["tx_datetime"])) for r in rows], np.int64)
        return self.score_encoded(self.encode(cust, term, amount, anchor))

    def fit_head(self, x: np.ndarray, y: np.ndarray, cfg: HeadConfig = HeadConfig(), log=print) -> dict:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        head = TransactionHead(self.gnn.cfg.embedding_dim, cfg.hidden).to(self.device)
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
        xt = torch.from_numpy(np.asarray(x, np.float32)).to(self.device)
        yt = torch.from_numpy(np.asarray(y, np.float32)).to(self.device)
        t0 = time.perf_counter()
        for epoch in range(cfg.epochs):
            head.train()
            perm = rng.permutation(len(x))
            total = 0.0
            for lo in range(0, len(x), cfg.batch_size):
                idx = torch.from_numpy(perm[lo:lo + cfg.batch_size]).to(self.device)
                loss = nn.functional.binary_cross_entropy_with_logits(head(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
        head.eval()
        self.head = head
        log(f"deep head: {cfg.epochs} epochs on {len(x)} rows, last loss {total / max(len(x), 1):.4f}")
        return {"rows": int(len(x)), "epochs": cfg.epochs, "final_loss": total / max(len(x), 1),
                "seconds": time.perf_counter() - t0}


def rows_of(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (frame["customer_id"].to_numpy(np.int64), frame["terminal_id"].to_numpy(np.int64),
            frame["tx_amount"].to_numpy(np.float64), frame["tx_datetime"].to_numpy(np.int64))


__all__ = ["DeepRequestScorer", "HeadConfig", "TransactionHead", "rows_of", "transaction_features"]
