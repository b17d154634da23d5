"""Quality report: deep (at request time) vs distilled vs LightGBM on the same time split.

One run, one split (:func:`offline.evaluate.time_split`: train period, 7-day label delay, test
period, known-compromised cards removed from the test days), three scorers:

* **deep** — the stage-1 temporal GNN, frozen, sampled at each transaction's own time, with a
  transaction head trained on the train period (:mod:`offline.deep_baseline`);
* **distilled** — the shallow model on point-in-time distillation rows (:mod:`offline.distillation.replay`),
  using the deep model's embeddings snapshotted at least ``min_embedding_offset`` earlier;
* **lightgbm** — the published engineered features (:func:`offline.evaluate.lightgbm_baseline`).

Writes ``quality.json``, ``roc_pr.png``, ``metrics.png`` and the trained artefacts into the run
directory (``shallow_model.pt``, ``deep_head.pt``, and ``deep_model.pt`` + ``embeddings.parquet``
when it had to train the deep model itself).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from offline.datasets.base import RelationalDataset
from offline.deep_baseline import DeepRequestScorer, HeadConfig, rows_of
from offline.distillation.replay import replay_rows
from offline.distillation.shallow_model import prepare_features, save_model
from offline.distillation.trainer import MODEL_FILE, DistillConfig, predict_rows, train_shallow
from offline.embeddings import EmbeddingTable
from offline.evaluate import (SplitConfig, engineered_features, fraud_metrics, lightgbm_baseline, plot_roc_pr,
                              time_split, tx_day, write_json)
from schemas.plan import ServingPlan


@dataclass(frozen=True)
class QualityConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    deep_epochs: int = 3
    deep_max_samples_per_epoch: int = 100_000
    latency_requests: int = 200


def train_deep_model(ds: RelationalDataset, out: Path, cfg: QualityConfig, progress: bool, log) -> tuple[Path, Path]:
    """Stage-1 training + embeddings, for runs without a given deep model."""
    from offline.embed import daily_snapshots, write_embeddings
    from offline.train_deep import TrainConfig, train
    from offline.train_deep import save_model as save_deep_model

    tcfg = TrainConfig(split=cfg.split, epochs=cfg.deep_epochs, max_samples_per_epoch=cfg.deep_max_samples_per_epoch,
                       max_val_samples=20_000, device=cfg.distill.device, seed=cfg.distill.seed)
    model, metrics = train(ds, tcfg, progress=progress, log=log)
    save_deep_model(out / "deep_model.pt", model, tcfg)
    write_json(out / "deep_metrics.json", metrics)
    write_embeddings(model, tcfg, ds, out / "embeddings.parquet", daily_snapshots(ds), progress=progress)
    return out / "deep_model.pt", out / "embeddings.parquet"


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def measure_latency(plan, shallow, table, rows, test_pos, deep: DeepRequestScorer, test_frame, n: int) -> dict:
    """Single-request CPU latency (1 torch thread), in-process, for both models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        picks = rng.choice(len(test_pos), size=min(n, len(test_pos)), replace=False)
        it = iter(np.resize(picks, n + 10))

        def distilled():
            i = int(test_pos[next(it)])
            with torch.no_grad():
                shallow(prepare_features(shallow, plan, rows.batch([i]), table))

        records = test_frame.to_dict("records")
        it2 = iter(np.resize(picks, n + 10))

        def deep_one():
            deep.score_rows([records[int(next(it2))]])

        for _ in range(5):  # warm-up
            distilled()
            deep_one()
        return {"distilled_ms_p50": _median_ms(distilled, n), "deep_ms_p50": _median_ms(deep_one, n),
                "torch_threads": 1, "requests": n}
    finally:
        torch.set_num_threads(threads)


def run_quality(plan: ServingPlan, ds: RelationalDataset, out: str | Path, cfg: QualityConfig = QualityConfig(),
                deep_model: str | Path | None = None, embeddings: str | Path | None = None, progress: bool = True,
                log=print, dataset_info: dict | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tx = ds.table("transactions")
    n_days = int((tx["tx_datetime"].max() - tx["tx_datetime"].min()) // (86_400 * 10**9)) + 1
    split_cfg = cfg.split.fitted(n_days)
    cfg = QualityConfig(split=split_cfg, distill=cfg.distill, head=cfg.head, deep_epochs=cfg.deep_epochs,
                        deep_max_samples_per_epoch=cfg.deep_max_samples_per_epoch,
                        latency_requests=cfg.latency_requests)
    split = time_split(tx, split_cfg)
    log(f"split {split_cfg}: {len(split.train)} train / {len(split.test)} test transactions, "
        f"{int(split.train['tx_fraud'].sum())} / {int(split.test['tx_fraud'].sum())} fraud")
    timings = {}

    # ---- deep model (stage 1) + its embeddings ----
    t0 = time.perf_counter()
    if deep_model is None or embeddings is None:
        deep_model, embeddings = train_deep_model(ds, out, cfg, progress, log)
    timings["deep_train_s"] = time.perf_counter() - t0
    table = EmbeddingTable.from_parquet(embeddings, plan)

    # ---- deep at request time: transaction head on the frozen GNN ----
    t0 = time.perf_counter()
    deep = DeepRequestScorer.from_files(deep_model, None, ds, device=cfg.distill.device)
    x_train = deep.encode_many(*rows_of(split.train), progress=progress)
    y_train = split.train["tx_fraud"].to_numpy(np.float32)
    head_info = deep.fit_head(x_train, y_train, cfg.head, log=log)
    deep.save_head(out / "deep_head.pt", cfg.head.hidden)
    x_test = deep.encode_many(*rows_of(split.test), progress=progress)
    deep_test = deep.score_encoded(x_test)
    deep_train_soft = deep.score_encoded(x_train)
    timings["deep_head_s"] = time.perf_counter() - t0

    # ---- distillation rows (one replay for train + test) and the shallow model ----
    t0 = time.perf_counter()
    mask = np.zeros(len(tx), bool)
    mask[tx.index.get_indexer(split.train.index)] = True
    mask[tx.index.get_indexer(split.test.index)] = True
    rows = replay_rows(plan, tx, score_mask=mask, progress=progress)
    timings["replay_s"] = time.perf_counter() - t0
    pos_of = {int(r): i for i, r in enumerate(rows.row_index)}
    train_pos = np.array([pos_of[int(i)] for i in tx.index.get_indexer(split.train.index)])
    test_pos = np.array([pos_of[int(i)] for i in tx.index.get_indexer(split.test.index)])
    train_rows = rows.take(train_pos)
    test_rows = rows.take(test_pos)
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
    lgb = lightgbm_baseline(split, engineered_features(tx, split_cfg.delay_days), seed=cfg.distill.seed)
    timings["lightgbm_s"] = time.perf_counter() - t0

    y_test = split.test["tx_fraud"].to_numpy()
    cust = split.test["customer_id"].to_numpy()
    days = tx_day(split.test, split.day0_ns)
    models = {
        "deep": fraud_metrics(y_test, deep_test, cust, days),
        "distilled": fraud_metrics(y_test, distilled_test, cust, days),
        "lightgbm": {k: v for k, v in lgb["metrics"].items() if k != "features"},
    }
    bootstrap = auc_bootstrap(y_test, {"deep": deep_test, "distilled": distilled_test, "lightgbm": lgb["y_score"]},
                              [("distilled", "deep"), ("distilled", "lightgbm")], seed=cfg.distill.seed)
    latency = measure_latency(plan, shallow, table, rows, test_pos, deep, split.test, cfg.latency_requests)
    sizes = {
        "distilled_parameters": shallow.count_parameters(),
        "distilled_file_bytes": os.path.getsize(out / MODEL_FILE),
        "deep_parameters": sum(p.numel() for p in deep.gnn.parameters()) + sum(p.numel() for p in deep.head.parameters()),
        "deep_file_bytes": os.path.getsize(deep_model) + os.path.getsize(out / "deep_head.pt"),
        "embeddings_file_bytes": os.path.getsize(embeddings),
    }
    report = {
        "dataset": dataset_info or {},
        "transactions": len(tx),
        "split": split_cfg.to_dict(),
        "train_rows": len(split.train), "test_rows": len(split.test),
        "train_fraud": int(y_train.sum()), "test_fraud": int(y_test.sum()),
        "removed_known_compromised": split.removed_known_compromised,
        "models": models,
        "auc_gap_deep_minus_distilled": models["deep"]["auc_roc"] - models["distilled"]["auc_roc"],
        "auc_gap_distilled_minus_lightgbm": models["distilled"]["auc_roc"] - models["lightgbm"]["auc_roc"],
        "auc_bootstrap": bootstrap,
        "cold_start_rate_test": cold,
        "latency": latency,
        "sizes": sizes,
        "distill": {**distill_info, "config": cfg.distill.to_dict()},
        "deep_head": {**head_info, "config": cfg.head.to_dict()},
        "deep_model": str(deep_model), "embeddings": str(embeddings),
        "timings_s": timings, "seconds_total": time.perf_counter() - t_start,
    }
    write_json(out / "quality.json", report)
    plot_roc_pr({"deep (request-time GNN)": (y_test, deep_test), "distilled": (y_test, distilled_test),
                 "lightgbm": (y_test, lgb["y_score"])}, out / "roc_pr.png",
                title=f"fraud test period ({len(y_test)} tx, {int(y_test.sum())} fraud)")
    plot_metrics(models, out / "metrics.png")
    np.savez(out / "test_scores.npz", row_index=test_rows.row_index, y=y_test, deep=deep_test,
             distilled=distilled_test, lightgbm=lgb["y_score"])
    log(json.dumps({k: report[k] for k in ("models", "latency", "sizes")}, indent=1, default=str))
    return report


def auc_bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], pairs: list[tuple[str, str]], n: int = 500,
                  seed: int = 0) -> dict:
    """95 % percentile intervals of each scorer's AUC and of AUC differences ``a - b`` for the
    given pairs, from one paired bootstrap over test transactions (each resample scores every
    model on the same rows). Transactions are resampled independently, which ignores that a
    card's transactions are correlated: read the intervals as a lower bound on the uncertainty."""
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


def plot_metrics(models: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["auc_roc", "average_precision", "card_precision@100"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(models)
    for i, (name, m) in enumerate(models.items()):
        vals = [m[k] for k in metrics]
        bars = ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(models) - 1) / 2, metrics)
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("fraud test period: deep vs distilled vs LightGBM")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
