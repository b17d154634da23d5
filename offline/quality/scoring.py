"""Quality report of a scoring plan: deep (at request time) vs distilled vs LightGBM, one split.

The split (:func:`offline.evaluate.time_split`, the column names from the spec): train period =
``train_days`` ending one label delay before the spec's test start, test period = the spec's;
entities with a positive label known before a test day are dropped from that day. Three scorers
on exactly the same test rows:

* **deep** -- the project's trained deep model (``RUN/deep_model.pt``), each row seeded at its
  own time on the leak-free graph (:mod:`offline.quality.deep`);
* **distilled** -- the shallow model on point-in-time rows (:mod:`offline.distillation.replay`),
  with the deep model's embeddings (``RUN/embeddings.parquet``) admissible at each row;
* **lightgbm** -- engineered features from the spec (:mod:`offline.quality.features`).

Writes ``quality.json``, ``roc_pr.png``, ``metrics.png``, ``test_scores.npz`` and the trained
shallow model (and the deep model's frozen-feature head when the project has no fact-label
head) into the output directory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from offline.data.spec import Project
from offline.datasets.base import RelationalDataset
from offline.distillation.replay import replay_rows
from offline.distillation.shallow_model import prepare_features, save_model
from offline.distillation.trainer import MODEL_FILE, DistillConfig, predict_rows, train_shallow
from offline.embeddings import EmbeddingTable
from offline.evaluate import SplitConfig, plot_roc_pr, row_day, scoring_metrics, time_split, write_json
from offline.quality.deep import DeepRequestScorer, HeadConfig
from offline.quality.features import FactColumns, engineered_features, lightgbm_scores

DEEP_HEAD_FILE = "deep_head.pt"


@dataclass(frozen=True)
class QualityConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    latency_requests: int = 200


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def measure_latency(plan, shallow, table, rows, test_pos, deep: DeepRequestScorer, fact_rows: np.ndarray,
                    fact_times: np.ndarray, n: int) -> dict:
    """Single-request CPU latency (1 torch thread), in-process, for both models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        picks = rng.choice(len(test_pos), size=min(n, len(test_pos)), replace=False)
        it, it2 = iter(np.resize(picks, n + 10)), iter(np.resize(picks, n + 10))

        def distilled():
            i = int(test_pos[next(it)])
            with torch.no_grad():
                shallow(prepare_features(shallow, plan, rows.batch([i]), table))

        def deep_one():
            i = int(next(it2))
            deep.score(fact_rows[i:i + 1], fact_times[i:i + 1])

        for _ in range(5):  # warm-up
            distilled()
            deep_one()
        return {"distilled_ms_p50": _median_ms(distilled, n), "deep_ms_p50": _median_ms(deep_one, n),
                "torch_threads": 1, "requests": n}
    finally:
        torch.set_num_threads(threads)


def run_quality(project: Project, ds: RelationalDataset, out: str | Path, cfg: QualityConfig, *, label: str,
                entity: str, day0_ns: int, deep_model: str | Path, embeddings: str | Path,
                other_tables: Mapping[str, pd.DataFrame] | None = None, progress: bool = True, log=print,
                dataset_info: dict | None = None) -> dict:
    """``label``: the serving task's label column of the plan's fact table; ``entity``: the fact
    column per-entity precision groups by."""
    plan = project.plan
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    time_col = plan.fact.time_column
    tx = ds.table(plan.fact_table)
    split = time_split(tx, cfg.split, day0_ns, time=time_col, label=label, entity=entity)
    train_i = tx.index.get_indexer(split.train.index)
    test_i = tx.index.get_indexer(split.test.index)
    y_train = split.train[label].to_numpy(np.float32)
    y_test = split.test[label].to_numpy(np.float32)
    # every training label had arrived when the test period began
    assert int(split.train[time_col].max()) < split.test_start_ns - split.label_delay_ns
    log(f"split {cfg.split}: {len(split.train)} train / {len(split.test)} test rows, "
        f"{int(y_train.sum())} / {int(y_test.sum())} positive")
    timings = {}

    # ---- deep at request time ----
    t0 = time.perf_counter()
    deep = DeepRequestScorer.from_files(deep_model, project, ds, plan.fact_table, label, device=cfg.distill.device)
    t_train, t_test = tx[time_col].to_numpy(np.int64)[train_i], tx[time_col].to_numpy(np.int64)[test_i]
    head_info = {"task": deep.task} if deep.task else {}
    deep_train_soft = None
    if deep.needs_head or cfg.distill.soft_weight > 0:
        x_train = deep.encode_many(train_i, t_train, progress=progress)
        if deep.needs_head:
            head_info = deep.fit_head(x_train, y_train, cfg.head, log=log)
            deep.save_head(out / DEEP_HEAD_FILE)
        deep_train_soft = deep.score_encoded(x_train)
    deep_test = deep.score_encoded(deep.encode_many(test_i, t_test, progress=progress))
    timings["deep_s"] = time.perf_counter() - t0

    # ---- distillation rows (one replay for train + test) and the shallow model ----
    t0 = time.perf_counter()
    table = EmbeddingTable.from_parquet(embeddings, plan)
    mask = np.zeros(len(tx), bool)
    mask[train_i] = True
    mask[test_i] = True
    rows = replay_rows(plan, tx, score_mask=mask, progress=progress, other_tables=other_tables)
    timings["replay_s"] = time.perf_counter() - t0
    pos_of = {int(r): i for i, r in enumerate(rows.row_index)}
    train_pos = np.array([pos_of[int(i)] for i in train_i])
    test_pos = np.array([pos_of[int(i)] for i in test_i])
    train_rows, test_rows = rows.take(train_pos), rows.take(test_pos)
    t0 = time.perf_counter()
    shallow, distill_info = train_shallow(train_rows, table, cfg.distill, labels=y_train,
                                          soft_labels=deep_train_soft, progress=progress, log=log)
    timings["distill_train_s"] = time.perf_counter() - t0
    save_model(out / MODEL_FILE, shallow, plan)
    distilled_test = predict_rows(shallow, test_rows, table, device=cfg.distill.device)
    cold = {}
    anchors = test_rows.scalars["anchor_time"]
    for key, etype in zip(plan.embedding_keys, plan.embedding_entity_types):
        _, miss = table.lookup(etype, test_rows.scalars[f"{plan.fact_table}.{key.column}"], anchors)
        cold[str(key)] = float(miss.mean())

    # ---- LightGBM on engineered features ----
    t0 = time.perf_counter()
    feats = engineered_features(tx, FactColumns.of(project, plan.fact_table))
    lgb_test = lightgbm_scores(feats.iloc[train_i], y_train, feats.iloc[test_i], seed=cfg.distill.seed)
    timings["lightgbm_s"] = time.perf_counter() - t0

    scores = {"deep": deep_test, "distilled": distilled_test, "lightgbm": lgb_test}
    ent = split.test[entity].to_numpy()
    days = row_day(split.test, split.day0_ns, time_col)
    models = {name: scoring_metrics(y_test, s, ent, days) for name, s in scores.items()}
    models["lightgbm"]["features"] = list(feats.columns)
    bootstrap = auc_bootstrap(y_test, scores, [("distilled", "deep"), ("distilled", "lightgbm")],
                              seed=cfg.distill.seed)
    latency = measure_latency(plan, shallow, table, rows, test_pos, deep, test_i, t_test, cfg.latency_requests)
    head_bytes = os.path.getsize(out / DEEP_HEAD_FILE) if deep.needs_head else 0
    sizes = {
        "distilled_parameters": shallow.count_parameters(),
        "distilled_file_bytes": os.path.getsize(out / MODEL_FILE),
        "deep_parameters": deep.parameters(),
        "deep_file_bytes": os.path.getsize(deep_model) + head_bytes,
        "embeddings_file_bytes": os.path.getsize(embeddings),
    }
    report = {
        "dataset": dataset_info or {},
        "fact_table": plan.fact_table, "label": label, "entity": entity,
        "fact_rows": len(tx),
        "split": cfg.split.to_dict(), "day0_ns": int(day0_ns),
        "train_period_ns": [split.ns(cfg.split.train_start_day), split.train_end_ns],
        "test_period_ns": [split.test_start_ns, split.ns(cfg.split.test_end_day)],
        "train_rows": len(split.train), "test_rows": len(split.test),
        "train_positive": int(y_train.sum()), "test_positive": int(y_test.sum()),
        "removed_known_positive_entities": split.removed_known_compromised,
        "models": models,
        "auc_gap_deep_minus_distilled": models["deep"]["auc_roc"] - models["distilled"]["auc_roc"],
        "auc_gap_distilled_minus_lightgbm": models["distilled"]["auc_roc"] - models["lightgbm"]["auc_roc"],
        "auc_bootstrap": bootstrap,
        "cold_start_rate_test": cold,
        "latency": latency,
        "sizes": sizes,
        "distill": {**distill_info, "config": cfg.distill.to_dict()},
        "deep_head": head_info,
        "deep_model": str(deep_model), "embeddings": str(embeddings),
        "timings_s": timings, "seconds_total": time.perf_counter() - t_start,
    }
    write_json(out / "quality.json", report)
    plot_roc_pr({"deep (request time)": (y_test, deep_test), "distilled": (y_test, distilled_test),
                 "lightgbm": (y_test, lgb_test)}, out / "roc_pr.png",
                title=f"{plan.fact_table} test period ({len(y_test)} rows, {int(y_test.sum())} positive)")
    plot_metrics(models, out / "metrics.png", title=f"{plan.fact_table}.{label}, test period")
    np.savez(out / "test_scores.npz", row_index=test_i, train_row_index=train_i, y=y_test, **scores)
    log(json.dumps({k: report[k] for k in ("latency", "sizes")}, indent=1, default=str))
    return report


def auc_bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], pairs: list[tuple[str, str]], n: int = 500,
                  seed: int = 0) -> dict:
    """95 % percentile intervals of each scorer's AUC and of AUC differences ``a - b`` for the
    given pairs, from one paired bootstrap over test rows (each resample scores every model on
    the same rows). Rows are resampled independently, which ignores that an entity's rows are
    correlated: read the intervals as a lower bound on the uncertainty."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in scores}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        for name, s in scores.items():
            draws[name].append(roc_auc_score(y[idx], np.asarray(s)[idx]))
    draws = {k: np.asarray(v) for k, v in draws.items()}

    def interval(v):
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else [float("nan")] * 2

    return {"resamples": int(len(next(iter(draws.values())))), "seed": seed,
            "auc_ci95": {k: interval(v) for k, v in draws.items()},
            "auc_diff_ci95": {f"{a}-{b}": interval(draws[a] - draws[b]) for a, b in pairs}}


def plot_metrics(models: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["auc_roc", "average_precision", "entity_precision@100"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(models)
    for i, (name, m) in enumerate(models.items()):
        vals = [m[k] for k in metrics]
        bars = ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(models) - 1) / 2, metrics)
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title(f"{title}: deep vs distilled vs LightGBM" if title else "deep vs distilled vs LightGBM")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
