"""Training the shallow model on point-in-time rows, and scoring rows with it; one loop for both heads.

The loss follows the plan's kind:

* scoring -- binary cross-entropy on the rows' 0/1 labels (``pos_weight``), optionally mixed with
  the deep request-time model's soft predictions (``soft_weight``);
* ranking -- sampled softmax, each positive candidate against the row's negatives,
  ``-log(e^{s_pos} / (e^{s_pos} + sum_neg e^{s_neg}))`` (or per-candidate BCE, ``loss="bce"``),
  optionally mixed with the KL to the deep model's pair scores (``soft_weight``): the softmax of
  dot(entity, candidate) over the row's candidates (the embedding layout makes that dot product
  the GNN's pair score).

``stop_after`` keeps the model after that epoch of the full schedule (what early stopping on a
validation period chose). With ``max_train_rows`` only a seeded uniform subsample of the rows is used (for machines where
an epoch over every training row is too slow); evaluation is not affected.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from offline.distillation.replay import TrainingRows
from offline.distillation.shallow_model import (RankingConfig, ScoringConfig, ShallowModel, build_model, load_model,
                                                prepare_features, save_model, serve)
from offline.embeddings import EmbeddingTable

MODEL_FILE = "shallow_model.pt"  # RUN/shallow_model.pt: the distilled model of a run, either kind


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 6
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pos_weight: float = 1.0  # scoring: weight of the positive class in the BCE
    loss: str = "softmax"  # ranking: "softmax" (sampled softmax) | "bce"
    soft_weight: float = 0.0  # weight of the deep model's soft targets in the loss
    max_train_rows: int | None = None  # seeded uniform subsample of the training rows (None: all)
    seed: int = 0
    device: str = "cpu"
    stop_after: int | None = None  # stop after this many epochs of the ``epochs``-long schedule
    model: ScoringConfig | RankingConfig | None = None  # None: the default of the plan's kind

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict() if self.model is not None else None
        return d


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None):
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    for lo in range(0, n, batch_size):
        yield idx[lo:lo + batch_size]


def subsample_indices(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded uniform subsample of ``range(n)`` of size ``max_rows`` (all
    rows when ``max_rows`` is None or >= n). Uniform, not stratified, so the training positive
    rate stays the period's own."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_train_rows: must be >= 1 (got {max_rows})")
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


# ----- losses ----------------------------------------------------------------------------------

def ranking_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    if kind == "bce":
        per = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.masked_fill(~valid, 0.0), labels, reduction="none")
        return (per * valid).sum() / valid.sum().clamp(min=1)
    if kind != "softmax":
        raise ValueError(f"loss: unknown {kind!r}; use 'softmax' or 'bce'")
    pos = (labels > 0.5) & valid
    neg = (labels <= 0.5) & valid
    lse_neg = torch.logsumexp(logits.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)  # [B, 1]
    safe = logits.masked_fill(~pos, 0.0)
    per = -(safe - torch.logaddexp(safe, lse_neg.expand_as(safe)))
    per = torch.where(pos & torch.isfinite(lse_neg), per, torch.zeros_like(per))
    return per.sum() / pos.sum().clamp(min=1)


def deep_pair_scores(feats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The deep model's score of each (entity, candidate) pair [B, N] and where it exists."""
    scores = (feats["candidates"] @ feats["household"].unsqueeze(-1)).squeeze(-1)
    ok = feats["candidate_valid"] & (feats["candidate_missing"] < 0.5) & (feats["household_missing"] < 0.5)[:, None]
    return scores, ok


def soft_target_loss(logits: torch.Tensor, deep: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """KL(softmax(deep) || softmax(logits)) over the candidates with a deep score; rows with fewer
    than two such candidates are skipped."""
    rows = ok.sum(1) >= 2
    if not rows.any():
        return logits.new_zeros(())
    lg, dp, m = logits[rows], deep[rows], ok[rows]
    log_q = torch.log_softmax(lg.masked_fill(~m, float("-inf")), 1)
    p = torch.softmax(dp.masked_fill(~m, float("-inf")), 1)
    return (p * (torch.log(p.clamp(min=1e-12)) - log_q.masked_fill(~m, 0.0))).masked_fill(~m, 0.0).sum(1).mean()


def _scoring_objective(cfg: DistillConfig, labels, soft_labels, device):
    y_all = torch.from_numpy(np.asarray(labels, np.float32))
    soft_all = torch.from_numpy(np.asarray(soft_labels, np.float32)) if soft_labels is not None else None
    pos_weight = torch.tensor(cfg.pos_weight, device=device)

    def loss_of(logits, feats, idx):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_all[idx].to(device),
                                                                    pos_weight=pos_weight)
        if soft_all is not None and cfg.soft_weight > 0:
            loss = (1 - cfg.soft_weight) * loss + cfg.soft_weight * \
                torch.nn.functional.binary_cross_entropy_with_logits(logits, soft_all[idx].to(device))
        return loss
    return loss_of


def _ranking_objective(cfg: DistillConfig, rows: TrainingRows, device):
    def loss_of(logits, feats, idx):
        labels = torch.from_numpy(rows.labels[idx, :logits.shape[1]]).to(device)
        loss = ranking_loss(logits, labels, feats["candidate_valid"], cfg.loss)
        if cfg.soft_weight > 0:
            deep, ok = deep_pair_scores(feats)
            loss = (1 - cfg.soft_weight) * loss + cfg.soft_weight * soft_target_loss(logits, deep, ok)
        return loss
    return loss_of


# ----- training --------------------------------------------------------------------------------

def train_shallow(rows: TrainingRows, table: EmbeddingTable, cfg: DistillConfig = DistillConfig(), *,
                  labels: np.ndarray | None = None, soft_labels: np.ndarray | None = None, progress: bool = True,
                  log=print, eval_fn: Callable[[ShallowModel], dict] | None = None) -> tuple[ShallowModel, dict]:
    """Fit the shallow model of the rows' plan; returns ``(model, info)``.

    Scoring plans take ``labels`` (0/1 per row) and optional ``soft_labels``; ranking plans
    learn from the rows' own per-candidate labels (targets vs sampled negatives)."""
    plan = rows.plan
    if plan.is_ranking == (labels is not None):
        raise ValueError("labels: scoring plans need 0/1 labels per row; ranking rows carry their own"
                         if labels is None else "labels: ranking rows carry their own per-candidate labels")
    available = len(rows)
    keep = subsample_indices(available, cfg.max_train_rows, cfg.seed)
    if len(keep) < available:
        rows = rows.take(keep)
        labels = np.asarray(labels)[keep] if labels is not None else None
        soft_labels = np.asarray(soft_labels)[keep] if soft_labels is not None else None
        log(f"distill: training on {len(keep)} of {available} rows (max_train_rows, seed {cfg.seed})")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    model = build_model(plan, table.dim, cfg.model, seed=cfg.seed).to(device)
    loss_of = (_ranking_objective(cfg, rows, device) if plan.is_ranking
               else _scoring_objective(cfg, labels, soft_labels, device))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(rows) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    history = []
    t0 = time.perf_counter()
    if cfg.stop_after is not None and not 1 <= cfg.stop_after <= cfg.epochs:
        raise ValueError(f"stop_after: must be in 1..epochs={cfg.epochs} (got {cfg.stop_after})")
    # the learning-rate schedule spans ``epochs``: stopping early keeps the model of that epoch
    for epoch in range(cfg.stop_after or cfg.epochs):
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(list(batches(len(rows), cfg.batch_size, rng)), desc=f"distill epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, unit="batch", mininterval=2.0)
        for idx in bar:
            feats = prepare_features(model, plan, rows.batch(idx), table, device)
            loss = loss_of(model(feats), feats, idx)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
        entry = {"epoch": epoch + 1, "train_loss": total / max(seen, 1)}
        if eval_fn is not None:
            entry["eval"] = eval_fn(model)
        history.append(entry)
        log(f"distill epoch {epoch + 1}: {entry}")
    model.eval()
    positives = rows.labels.sum() if plan.is_ranking else np.asarray(labels).sum()
    return model, {"history": history, "seconds_train": time.perf_counter() - t0, "rows": len(rows),
                   "rows_available": available, "positives": int(positives),
                   "parameters": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def predict_rows(model: ShallowModel, rows: TrainingRows, table: EmbeddingTable, batch_size: int | None = None,
                 device="cpu", progress: bool = False) -> np.ndarray:
    """Scores of the rows: scoring [N] (probabilities); ranking [N, C] (logits, padding ``-inf``)."""
    plan = rows.plan
    batch_size = batch_size or (32 if plan.is_ranking else 1024)
    out = (np.full(rows.candidates.shape, -np.inf, np.float32) if plan.is_ranking
           else np.zeros(len(rows), np.float32))
    for idx in tqdm(list(batches(len(rows), batch_size)), desc="score", disable=not progress, unit="batch"):
        score = serve(model, plan, rows.batch(idx), table, device)["score"]
        if plan.is_ranking:
            out[idx, :score.shape[1]] = score
        else:
            out[idx] = score
    return out


__all__ = ["DistillConfig", "MODEL_FILE", "batches", "deep_pair_scores", "load_model", "predict_rows", "ranking_loss",
           "save_model", "soft_target_loss", "subsample_indices", "train_shallow"]
