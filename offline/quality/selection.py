"""Choosing the distilled model's epochs and configuration on a validation period, never on the test.

The validation split has the test split's shape, moved earlier (:func:`validation_split`): the
validation period is the ``val_days`` days just before the training period, its training period
the ``train_days`` days ending one label delay before the validation start. Every validation
label had arrived before the training period began, so the choice reads nothing of the test
period (its rows, labels or the labels that arrive during it).

:func:`select_distill` trains one shallow model per configuration of a small grid on the
validation split's training rows for ``epochs`` epochs, scores the validation rows after every
epoch and keeps the (configuration, epoch) with the best validation AUC (ties: the earlier
epoch, then the earlier configuration). The caller retrains that configuration on the training
period and keeps the chosen epoch of the same schedule (``DistillConfig.stop_after``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from offline.distillation.replay import TrainingRows
from offline.distillation.trainer import DistillConfig, predict_rows, train_shallow
from offline.embeddings import EmbeddingTable
from offline.evaluate import SplitConfig, scoring_metrics

# grid keys: DistillConfig fields, and the shallow model's width / depth
GRID_KEYS = {"lr": float, "weight_decay": float, "pos_weight": float, "batch_size": int, "d_model": int,
             "n_layers": int}


def validation_split(test: SplitConfig, val_days: int) -> SplitConfig:
    """The split whose test period is the ``val_days`` days before ``test``'s training period,
    with the same training length and label delay."""
    if val_days < 1:
        raise ValueError(f"val_days (--val-days): must be >= 1 (got {val_days})")
    val_start = test.train_start_day - val_days
    start = val_start - test.delay_days - test.train_days
    if start < 0:
        raise ValueError(f"val_days (--val-days): {val_days} validation days + {test.train_days} training days + a "
                         f"{test.delay_days}-day label delay do not fit before the training start "
                         f"(day {test.train_start_day} of the data)")
    return SplitConfig(start, test.train_days, test.delay_days, val_days)


def parse_grid(text: str | None) -> list[dict]:
    """``"lr=1e-3,2e-3;d_model=32,64"`` -> the cross product as a list of overrides ([{}]: none)."""
    grid = [{}]
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in GRID_KEYS or not values.strip():
            raise ValueError(f"grid: {part!r}: use KEY=V1,V2 with KEY one of {', '.join(GRID_KEYS)}")
        try:
            vals = [GRID_KEYS[key](v) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"grid: {key}: values must be {GRID_KEYS[key].__name__} (got {values!r})") from None
        grid = [{**g, key: v} for g in grid for v in vals]
    return grid


def configured(cfg: DistillConfig, overrides: dict) -> DistillConfig:
    """``cfg`` with the grid's overrides (model width/depth go to the model config)."""
    model_keys = {k: v for k, v in overrides.items() if k in ("d_model", "n_layers")}
    out = replace(cfg, **{k: v for k, v in overrides.items() if k not in model_keys})
    if model_keys:
        if cfg.model is None:
            raise ValueError("grid: d_model / n_layers need an explicit model config")
        width = model_keys.get("d_model", cfg.model.d_model)
        out = replace(out, model=replace(cfg.model, **model_keys, d_ff=2 * width))
    return out


def select_distill(train_rows: TrainingRows, y_train: np.ndarray, val_rows: TrainingRows, y_val: np.ndarray,
                   val_entity: np.ndarray, val_day: np.ndarray, table: EmbeddingTable, cfg: DistillConfig,
                   grid: list[dict], *, soft_labels: np.ndarray | None = None, progress: bool = True,
                   log=print) -> dict:
    """The chosen overrides and epoch, with every candidate's validation metrics per epoch."""
    if len(np.unique(y_val)) < 2:
        raise ValueError("validation period: needs positive and negative rows to choose on (use more "
                         "--val-days, or --val-days 0 to skip the selection)")
    candidates = []
    for overrides in grid:
        c = configured(cfg, overrides)

        def evaluate(model, c=c):
            scores = predict_rows(model, val_rows, table, device=c.device)
            m = scoring_metrics(y_val, scores, val_entity, val_day)
            model.train()
            return {k: m[k] for k in ("auc_roc", "average_precision", "entity_precision@100")}

        _, info = train_shallow(train_rows, table, c, labels=y_train, soft_labels=soft_labels, progress=progress,
                                log=log, eval_fn=evaluate)
        candidates.append({"overrides": overrides, "epochs": [h["eval"] for h in info["history"]]})
    best = max(((i, e) for i, cand in enumerate(candidates) for e in range(len(cand["epochs"]))),
               key=lambda ie: (candidates[ie[0]]["epochs"][ie[1]]["auc_roc"], -ie[1], -ie[0]))
    i, e = best
    log(f"selection: {candidates[i]['overrides'] or 'base config'}, epoch {e + 1} of {cfg.epochs} "
        f"(validation AUC {candidates[i]['epochs'][e]['auc_roc']:.4f})")
    return {"overrides": candidates[i]["overrides"], "epoch": e + 1, "criterion": "validation auc_roc",
            "validation": candidates[i]["epochs"][e], "candidates": candidates}
