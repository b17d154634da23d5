"""Quality report of a scoring plan: deep (at request time) vs distilled vs LightGBM, one split.

The split (:func:`offline.evaluate.time_split`, the column names from the spec): train period =
``train_days`` ending one label delay before the spec's test start, test period = the spec's;
entities with a positive label known before a test day are dropped from that day. A validation
split of the same shape before the training period (:mod:`offline.quality.selection`) chooses the
distilled model's epoch and configuration; the test period is scored once per model seed. Three
scorers on exactly the same test rows:

* **deep** -- the project's trained deep model (``RUN/deep_model.pt``), each row seeded at its
  own time on the leak-free graph (:mod:`offline.quality.deep`);
* **distilled** -- the shallow model on point-in-time rows (:mod:`offline.distillation.replay`),
  with the deep model's embeddings (``RUN/embeddings.parquet``) admissible at each row;
* **lightgbm** -- engineered features from the spec (:mod:`offline.quality.features`).

Per model seed: metrics (:func:`offline.evaluate.scoring_metrics`) and paired entity-bootstrap
intervals; over the seeds, mean and sd. Writes ``quality.json`` (everything),
``scoring_quality.json`` (the summary, :func:`summarize`), ``roc_pr.png``, ``metrics.png``,
``seeds.png``, ``test_scores.npz`` and the first seed's shallow model (and the deep model's
frozen-feature head when the project has no fact-label head) into the output directory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
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
from offline.evaluate import (SplitConfig, entity_bootstrap, plot_roc_pr, row_day, scoring_metrics, time_split,
                              write_json)
from offline.quality.deep import DeepRequestScorer, HeadConfig
from offline.quality.features import FactColumns, engineered_features, lightgbm_scores
from offline.quality.selection import configured, select_distill, validation_split

DEEP_HEAD_FILE = "deep_head.pt"


@dataclass(frozen=True)
class QualityConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    latency_requests: int = 200
    val_days: int = 7  # validation period before the training period (0: no selection, fixed epochs)
    grid: tuple = ()  # configurations to choose among on the validation split (overrides; (): the base)
    seeds: tuple[int, ...] = (0,)  # model seeds: distilled, deep head (if fitted), LightGBM
    bootstrap: int = 500  # entity-bootstrap resamples per seed


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


def _positions(rows, idx: np.ndarray) -> np.ndarray:
    pos_of = {int(r): i for i, r in enumerate(rows.row_index)}
    return np.array([pos_of[int(i)] for i in idx], np.int64)


METRICS = ("auc_roc", "average_precision", "entity_precision@100")
SUMMARY_KEYS = {"auc_roc": "auc", "average_precision": "ap", "entity_precision@100": "cp100"}


def mean_sd(per_seed: list[dict]) -> dict:
    """``{model: {metric: mean, metric_sd: sd}}`` over per-seed ``{model: {metric: value}}``
    (sd with ddof=1; 0 for one seed)."""
    out = {}
    for name in per_seed[0]:
        out[name] = {}
        for key, v in per_seed[0][name].items():
            if not isinstance(v, (int, float)) or key in ("n", "n_positive"):
                out[name][key] = v
                continue
            vals = np.array([m[name][key] for m in per_seed], np.float64)
            out[name][key] = float(vals.mean())
            out[name][f"{key}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return out


def run_quality(project: Project, ds: RelationalDataset, out: str | Path, cfg: QualityConfig, *, label: str,
                entity: str, day0_ns: int, deep_model: str | Path, embeddings: str | Path,
                other_tables: Mapping[str, pd.DataFrame] | None = None, progress: bool = True, log=print,
                dataset_info: dict | None = None) -> dict:
    """``label``: the serving task's label column of the plan's fact table; ``entity``: the fact
    column per-entity precision groups by and the bootstrap resamples."""
    plan = project.plan
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    time_col = plan.fact.time_column
    tx = ds.table(plan.fact_table)
    times = tx[time_col].to_numpy(np.int64)
    split = time_split(tx, cfg.split, day0_ns, time=time_col, label=label, entity=entity)
    train_i = tx.index.get_indexer(split.train.index)
    test_i = tx.index.get_indexer(split.test.index)
    y_train = split.train[label].to_numpy(np.float32)
    y_test = split.test[label].to_numpy(np.float32)
    # every training label had arrived when the test period began
    assert int(split.train[time_col].max()) < split.test_start_ns - split.label_delay_ns
    log(f"split {cfg.split}: {len(split.train)} train / {len(split.test)} test rows, "
        f"{int(y_train.sum())} / {int(y_test.sum())} positive")
    val = None
    if cfg.val_days:
        vsplit = time_split(tx, validation_split(cfg.split, cfg.val_days), day0_ns, time=time_col, label=label,
                            entity=entity)
        # the validation period, its labels included, is over before the training period starts
        assert int(vsplit.test[time_col].max()) < split.ns(cfg.split.train_start_day)
        val = {"split": vsplit, "train_i": tx.index.get_indexer(vsplit.train.index),
               "val_i": tx.index.get_indexer(vsplit.test.index),
               "y_train": vsplit.train[label].to_numpy(np.float32), "y_val": vsplit.test[label].to_numpy(np.float32)}
        log(f"validation split {vsplit.config}: {len(vsplit.train)} train / {len(vsplit.test)} validation rows, "
            f"{int(val['y_train'].sum())} / {int(val['y_val'].sum())} positive")
    timings = {}

    # ---- deep at request time: encoded once, its head (if any) fitted per seed ----
    t0 = time.perf_counter()
    deep = DeepRequestScorer.from_files(deep_model, project, ds, plan.fact_table, label, device=cfg.distill.device)
    soft = cfg.distill.soft_weight > 0
    if soft and val is not None and deep.needs_head:
        raise ValueError("soft_weight: soft targets of a fitted deep head are not available on the validation "
                         "split (use --val-days 0, or a project with a fact-label head)")
    x_train = deep.encode_many(train_i, times[train_i], progress=progress) if deep.needs_head or soft else None
    x_test = deep.encode_many(test_i, times[test_i], progress=progress)
    val_soft = (deep.score_encoded(deep.encode_many(val["train_i"], times[val["train_i"]], progress=progress))
                if soft and val is not None else None)
    deep_val = None
    if val is not None and not deep.needs_head:  # the project's own head: its validation figures too
        vs = val["split"]
        s_val = deep.score_encoded(deep.encode_many(val["val_i"], times[val["val_i"]], progress=progress))
        deep_val = {k: v for k, v in scoring_metrics(val["y_val"], s_val, vs.test[entity].to_numpy(),
                                                     row_day(vs.test, vs.day0_ns, time_col)).items() if k in METRICS}
    timings["deep_encode_s"] = time.perf_counter() - t0

    # ---- point-in-time rows of every period (one replay) ----
    t0 = time.perf_counter()
    table = EmbeddingTable.from_parquet(embeddings, plan)
    mask = np.zeros(len(tx), bool)
    for idx in [train_i, test_i] + ([val["train_i"], val["val_i"]] if val is not None else []):
        mask[idx] = True
    rows = replay_rows(plan, tx, score_mask=mask, progress=progress, other_tables=other_tables)
    timings["replay_s"] = time.perf_counter() - t0
    test_pos = _positions(rows, test_i)
    train_rows, test_rows = rows.take(_positions(rows, train_i)), rows.take(test_pos)
    if val is not None:
        val["train_rows"] = rows.take(_positions(rows, val["train_i"]))
        val["val_rows"] = rows.take(_positions(rows, val["val_i"]))
    cold = {}
    anchors = test_rows.scalars["anchor_time"]
    for key, etype in zip(plan.embedding_keys, plan.embedding_entity_types):
        _, miss = table.lookup(etype, test_rows.scalars[f"{plan.fact_table}.{key.column}"], anchors)
        cold[str(key)] = float(miss.mean())
    feats = engineered_features(tx, FactColumns.of(project, plan.fact_table))

    ent = split.test[entity].to_numpy()
    days = row_day(split.test, split.day0_ns, time_col)
    pairs = [("distilled", "deep"), ("distilled", "lightgbm"), ("deep", "lightgbm")]
    per_seed, scores_of, first = [], {}, None
    for seed in cfg.seeds:
        log(f"---- model seed {seed} ----")
        entry = {"seed": int(seed)}
        distill_cfg = replace(cfg.distill, seed=int(seed))
        t0 = time.perf_counter()
        head_info = {"task": deep.task} if deep.task else {}
        if deep.needs_head:
            head_info = deep.fit_head(x_train, y_train, replace(cfg.head, seed=int(seed)), log=log)
        deep_test = deep.score_encoded(x_test)
        deep_train_soft = deep.score_encoded(x_train) if soft else None
        entry["deep_head"] = head_info
        timings[f"deep_head_s_seed{seed}"] = time.perf_counter() - t0

        # ---- selection on the validation split, then one fit on the training period ----
        t0 = time.perf_counter()
        if val is not None:
            vs = val["split"]
            choice = select_distill(val["train_rows"], val["y_train"], val["val_rows"], val["y_val"],
                                    vs.test[entity].to_numpy(), row_day(vs.test, vs.day0_ns, time_col), table,
                                    distill_cfg, cfg.grid or [{}], soft_labels=val_soft, progress=progress, log=log)
            final_cfg = replace(configured(distill_cfg, choice["overrides"]), stop_after=choice["epoch"])
            lgb_val = lightgbm_scores(feats.iloc[val["train_i"]], val["y_train"], feats.iloc[val["val_i"]],
                                      seed=int(seed))
            choice["lightgbm_validation"] = {k: v for k, v in scoring_metrics(
                val["y_val"], lgb_val, vs.test[entity].to_numpy(), row_day(vs.test, vs.day0_ns, time_col)).items()
                if k in METRICS}
            entry["selection"] = choice
        else:
            final_cfg = distill_cfg
            entry["selection"] = None
        timings[f"selection_s_seed{seed}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        shallow, distill_info = train_shallow(train_rows, table, final_cfg, labels=y_train,
                                              soft_labels=deep_train_soft, progress=progress, log=log)
        timings[f"distill_train_s_seed{seed}"] = time.perf_counter() - t0
        distilled_test = predict_rows(shallow, test_rows, table, device=cfg.distill.device)
        entry["distill"] = {**distill_info, "config": final_cfg.to_dict()}

        t0 = time.perf_counter()
        lgb_test = lightgbm_scores(feats.iloc[train_i], y_train, feats.iloc[test_i], seed=int(seed))
        timings[f"lightgbm_s_seed{seed}"] = time.perf_counter() - t0

        scores = {"deep": deep_test, "distilled": distilled_test, "lightgbm": lgb_test}
        entry["models"] = {name: scoring_metrics(y_test, s, ent, days) for name, s in scores.items()}
        entry["bootstrap"] = entity_bootstrap(y_test, scores, ent, days, pairs, n=cfg.bootstrap, seed=int(seed))
        per_seed.append(entry)
        scores_of.update({f"{name}_seed{seed}": s for name, s in scores.items()})
        if first is None:  # the first seed's models are the run's (export, latency)
            first = scores
            save_model(out / MODEL_FILE, shallow, plan)
            if deep.needs_head:
                deep.save_head(out / DEEP_HEAD_FILE)
            latency = measure_latency(plan, shallow, table, rows, test_pos, deep, test_i, times[test_i],
                                      cfg.latency_requests)
            sizes = {"distilled_parameters": shallow.count_parameters(),
                     "distilled_file_bytes": os.path.getsize(out / MODEL_FILE),
                     "deep_parameters": deep.parameters(),
                     "deep_file_bytes": os.path.getsize(deep_model) + (
                         os.path.getsize(out / DEEP_HEAD_FILE) if deep.needs_head else 0),
                     "embeddings_file_bytes": os.path.getsize(embeddings)}

    models = mean_sd([e["models"] for e in per_seed])
    models["lightgbm"]["features"] = list(feats.columns)
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
        "validation": None if val is None else {
            "split": val["split"].config.to_dict(),
            "validation_period_ns": [val["split"].test_start_ns, val["split"].ns(val["split"].config.test_end_day)],
            "train_period_ns": [val["split"].ns(val["split"].config.train_start_day), val["split"].train_end_ns],
            "train_rows": len(val["split"].train), "validation_rows": len(val["split"].test),
            "train_positive": int(val["y_train"].sum()), "validation_positive": int(val["y_val"].sum()),
            "grid": list(cfg.grid or [{}]), "max_epochs": cfg.distill.epochs,
            "deep": deep_val},  # None with a fitted head (fitted on the training period only)
        "seeds": [int(s) for s in cfg.seeds],
        "models": models,
        "per_seed": per_seed,
        "metric_definitions": {
            "entity_precision@100": "published: entities detected (positive, in an earlier day's top 100) are "
                                    "left out of later days' rankings",
            "entity_precision_lenient@100": "detected entities kept (the figures before the published definition)",
            "bootstrap": f"{cfg.bootstrap} resamples of the test period's {entity} values, all rows of each"},
        "auc_gap_deep_minus_distilled": models["deep"]["auc_roc"] - models["distilled"]["auc_roc"],
        "auc_gap_distilled_minus_lightgbm": models["distilled"]["auc_roc"] - models["lightgbm"]["auc_roc"],
        "cold_start_rate_test": cold,
        "latency": latency,
        "sizes": sizes,
        "distill": {"config": cfg.distill.to_dict()},
        "deep_head": per_seed[0]["deep_head"],
        "deep_model": str(deep_model), "embeddings": str(embeddings),
        "timings_s": timings, "seconds_total": time.perf_counter() - t_start,
    }
    write_json(out / "quality.json", report)
    summary = summarize([report], [str(out.parent)])
    write_json(out / SUMMARY_FILE, summary)
    plot_roc_pr({"deep (request time)": (y_test, first["deep"]), "distilled": (y_test, first["distilled"]),
                 "lightgbm": (y_test, first["lightgbm"])}, out / "roc_pr.png",
                title=f"{plan.fact_table} test period ({len(y_test)} rows, {int(y_test.sum())} positive)")
    plot_metrics(models, out / "metrics.png", title=f"{plan.fact_table}.{label}, test period")
    plot_seeds(seed_points([report], [out.parent.name]), out / "seeds.png",
               title=f"{plan.fact_table}.{label}, test period, per seed (95 % entity-bootstrap CIs)")
    np.savez(out / "test_scores.npz", row_index=test_i, train_row_index=train_i, y=y_test, **first, **scores_of)
    log(json.dumps({k: report[k] for k in ("latency", "sizes")}, indent=1, default=str))
    return report


# ----- several seeds and runs -----------------------------------------------------------------------

SUMMARY_FILE = "scoring_quality.json"


def seed_points(reports: list[dict], runs: list[str]) -> list[dict]:
    """One point per (run, model seed): its label, metrics and bootstrap intervals."""
    points = []
    for report, run in zip(reports, runs):
        data_seed = report.get("dataset", {}).get("seed")
        for e in report["per_seed"]:
            points.append({"run": run, "data_seed": data_seed, "model_seed": e["seed"], "models": e["models"],
                           "ci95": e["bootstrap"]["ci95"]})
    return points


def summarize(reports: list[dict], runs: list[str]) -> dict:
    """The machine-readable summary of one or several quality reports (one per data seed, each
    with its model seeds): ``{"split", "seeds", "models": {name: {"auc", "auc_sd", "ap", "ap_sd",
    "cp100", "cp100_sd"}}}``, means and sds over every (run, model seed). The reports must share
    the split, fact table and label."""
    if not reports:
        raise ValueError("summary: no quality report given")
    keys = ("split", "fact_table", "label", "entity")
    for report, run in zip(reports, runs):
        for k in keys:
            if report.get(k) != reports[0].get(k):
                raise ValueError(f"summary: {run}: {k} {report.get(k)!r} differs from {runs[0]}'s "
                                 f"{reports[0].get(k)!r}")
    points = seed_points(reports, runs)
    stats = mean_sd([p["models"] for p in points])
    models = {}
    for name, m in stats.items():
        models[name] = {}
        for key, short in SUMMARY_KEYS.items():
            models[name][short] = m[key]
            models[name][f"{short}_sd"] = m[f"{key}_sd"]
    first = reports[0]
    split = {**first["split"], "fact_table": first["fact_table"], "label": first["label"], "entity": first["entity"],
             "train_period_ns": first["train_period_ns"], "test_period_ns": first["test_period_ns"],
             "validation": (first.get("validation") or {}).get("split"),
             "test_rows": [r["test_rows"] for r in reports], "test_positive": [r["test_positive"] for r in reports]}
    return {"split": split,
            "seeds": [{"run": p["run"], "data_seed": p["data_seed"], "model_seed": p["model_seed"]} for p in points],
            "models": models}


def plot_seeds(points: list[dict], path: Path, title: str = "") -> None:
    """Per metric: each model's per-seed values with their 95 % bootstrap intervals, and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(points[0]["models"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4))
    for ax, metric in zip(axes, METRICS):
        for j, name in enumerate(names):
            xs = j + np.linspace(-0.25, 0.25, len(points)) if len(points) > 1 else np.array([j])
            vals = np.array([p["models"][name][metric] for p in points])
            ci = np.array([p["ci95"][name][metric] for p in points])
            yerr = np.maximum(np.vstack([vals - ci[:, 0], ci[:, 1] - vals]), 0.0)  # a percentile CI may miss the value
            ax.errorbar(xs, vals, yerr=yerr, fmt="o", ms=4, capsize=3,
                        color=f"C{j}")
            ax.hlines(vals.mean(), j - 0.35, j + 0.35, color=f"C{j}", lw=2)
            ax.annotate(f"{vals.mean():.3f}", (j, vals.mean()), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=8)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(metric)
        ax.grid(alpha=0.3, axis="y")
    labels = ", ".join(f"{p['run']}:{p['model_seed']}" for p in points)
    fig.suptitle(f"{title}\nseeds (run:model seed) left to right: {labels}" if title else labels, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics(models: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(models)
    for i, (name, m) in enumerate(models.items()):
        vals = [m[k] for k in METRICS]
        bars = ax.bar(np.arange(len(METRICS)) + i * width, vals, width, label=name,
                      yerr=[m.get(f"{k}_sd", 0.0) for k in METRICS], capsize=3)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(METRICS)) + width * (len(models) - 1) / 2, METRICS)
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title(f"{title}: deep vs distilled vs LightGBM" if title else "deep vs distilled vs LightGBM")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
