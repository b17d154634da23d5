"""Quality of in-session recommendations: baselines, the deep model and the distilled ranker
ranked on the same test examples and candidates (``relstream offline quality`` with a ranking plan).

Protocol (docs/recsys.md, "Quality"), for any project with a next-item task and a ranking plan:
the test period starts at the deep model's training cut (the spec's test start: nothing any
model trained on lies at or after it). Each test session gives one ranking example
(``offline.tasks.ranking.ranking_examples``: half the session revealed, targets = the items of
the rest not yet in it), optionally a seeded sample. The candidates of an example are the
catalog's top ``n_candidates`` items (rows in the 4 weeks strictly before the anchor); the items
already revealed in the open session are removed from every model's list (they cannot be
targets). Metrics: recall@k and NDCG@k (``offline.tasks.ranking.ranking_metrics``) where recall
counts every target, including targets outside the candidate set, so the candidate-set recall is
the ceiling of every model. :func:`candidate_ceilings` measures that ceiling for other candidate
sources too (the entity's own past items, items co-occurring with the revealed ones).

A scorer is ``fn(examples, cands) -> float scores [n_examples, n_candidates]`` (higher first).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from offline.data.spec import NextItemTask, Project
from offline.distillation.replay import replay_ranking_rows
from offline.distillation.shallow_model import RankingModel
from offline.distillation.trainer import load_model, predict_rows
from offline.embeddings import EmbeddingTable
from offline.evaluate import write_json
from offline.models.train import DeepModel
from offline.relgraph.graph import build_graph
from offline.tasks.ranking import (CoOccurrence, InteractionIndex, RankingColumns, buy_again_scores,
                                   popularity_scores, ranking_examples, ranking_metrics)
from schemas.plan import ServingPlan

PAD = -1  # candidate slot without an item (fewer than n_candidates items in the window)
NS_PER_DAY = 86_400 * 10**9


@dataclass
class CandidateSets:
    """Per example: candidate item ids [E, N] (``PAD`` where none), their row counts in the
    look-back window [E, N], and the targets' positions among the candidates."""

    ids: np.ndarray
    counts: np.ndarray
    truth: list[tuple[np.ndarray, int]]  # (candidate positions of targets, number of targets)
    excluded: np.ndarray  # bool [E, N]: padding or an item already revealed in the session

    @property
    def ceiling(self) -> float:
        """Mean share of an example's targets that are candidates (recall@N of a perfect ranker)."""
        return float(np.mean([len(pos) / n for pos, n in self.truth])) if self.truth else float("nan")


def candidate_sets(index: InteractionIndex, examples: pd.DataFrame, n_candidates: int, days: float = 28,
                   progress: bool = False) -> CandidateSets:
    E = len(examples)
    ids = np.full((E, n_candidates), PAD, np.int64)
    counts = np.zeros((E, n_candidates), np.float64)
    truth = []
    rows = tqdm(examples.itertuples(index=False), total=E, desc="candidates", disable=not progress, unit="example")
    for i, row in enumerate(rows):
        p, c = index.popular(int(row.anchor_time), n_candidates, days)
        ids[i, :len(p)], counts[i, :len(p)] = p, c
        order = np.argsort(p, kind="stable")
        pos = np.searchsorted(p[order], row.targets)
        pos_c = np.minimum(pos, max(len(p) - 1, 0))
        hit = (pos < len(p)) & (p[order][pos_c] == row.targets) if len(p) else np.zeros(len(row.targets), bool)
        truth.append((order[pos_c[hit]], len(row.targets)))
    excluded = ids == PAD
    for i, row in enumerate(examples.itertuples(index=False)):
        excluded[i] |= np.isin(ids[i], row.revealed_items)
    return CandidateSets(ids, counts, truth, excluded)


def candidate_ceilings(index: InteractionIndex, cooc: CoOccurrence, examples: pd.DataFrame, cols: RankingColumns,
                       catalog: np.ndarray, sizes: tuple[int, ...], progress: bool = False) -> dict:
    """Recall ceiling of each candidate source and of their union: per example the share of its
    targets in the source's first N items, mean (and standard error) over examples, per N.

    Sources, all strictly before the anchor: ``catalog_top`` (the candidates ranked today, the
    rows of ``catalog`` = :attr:`CandidateSets.ids`: the N most frequent items of the 28 days
    before, revealed items then removed; every N at most its width), ``entity_history``
    (the entity's own past items, most frequent first, then most recent), ``co_occurrence``
    (items that shared a session with a revealed item before the test period, by summed count).
    The last two leave the revealed items out before taking N."""
    if max(sizes) > catalog.shape[1] or min(sizes) < 1:
        raise ValueError(f"--ceiling-sizes: each N in [1, {catalog.shape[1]}] (the candidates), got {list(sizes)}")
    names = ("catalog_top", "entity_history", "co_occurrence", "union")
    share = {n: {N: [] for N in sizes} for n in names}
    size = {n: {N: [] for N in sizes} for n in names}
    entities = examples[cols.entity].to_numpy(np.int64)
    rows = tqdm(examples.itertuples(index=False), total=len(examples), desc="candidate ceilings",
                disable=not progress, unit="example")
    for i, row in enumerate(rows):
        shown, targets = np.asarray(row.revealed_items, np.int64), np.asarray(row.targets, np.int64)
        hist = index.entity_items(int(entities[i]), int(row.anchor_time))
        source = {"catalog_top": catalog[i][catalog[i] != PAD],
                  "entity_history": hist[~np.isin(hist, shown)], "co_occurrence": cooc.items(shown)}
        for N in sizes:
            sets = {n: ids[:N] for n, ids in source.items()}
            sets["union"] = np.unique(np.concatenate(list(sets.values())))
            for n, ids in sets.items():
                share[n][N].append(float(np.isin(targets, ids).mean()))
                size[n][N].append(len(ids))

    def se(v):
        return float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"sizes": list(sizes), "examples": len(examples),
            "recall": {n: {str(N): float(np.mean(v)) for N, v in per.items()} for n, per in share.items()},
            "stderr": {n: {str(N): se(v) for N, v in per.items()} for n, per in share.items()},
            "mean_size": {n: {str(N): float(np.mean(v)) for N, v in per.items()} for n, per in size.items()},
            "definition": "share of an example's targets among the source's first N items (mean over examples); "
                          "catalog_top: the N most frequent items of the 28 days before the anchor (today's "
                          "candidates); entity_history: the entity's items before the anchor, by count then "
                          "recency, revealed items left out; co_occurrence: items sharing a session with a "
                          "revealed item before the test period, by summed count, revealed left out; union: "
                          "the three sets of size N together"}


# ----- scorers -----------------------------------------------------------------------------------

def popularity_scorer(examples: pd.DataFrame, cands: CandidateSets) -> np.ndarray:
    return np.stack([popularity_scores(c) for c in cands.counts]) if len(cands.counts) else cands.counts


def buy_again_scorer(index: InteractionIndex, entity_column: str, window_ns: int | None = None,
                     max_rows: int | None = None) -> Callable:
    """Buy-again over the whole history, or (``window_ns``, ``max_rows``) over what the plan's
    real-time window shows the ranker."""
    def score(examples: pd.DataFrame, cands: CandidateSets) -> np.ndarray:
        entities, anchors = examples[entity_column].to_numpy(np.int64), examples["anchor_time"].to_numpy(np.int64)
        return np.stack([buy_again_scores(index, int(e), int(a), cands.ids[i], cands.counts[i], window_ns, max_rows)
                         for i, (e, a) in enumerate(zip(entities, anchors))])
    return score


def deep_scorer(entity_vectors: Callable, item_vectors: Callable, stats: dict | None = None,
                chunk: int = 100) -> Callable:
    """The deep model's pair score ``dot(entity vector, item vector)`` in the embeddings'
    ``pair_bias`` layout (entity ``[e, 1]``, item ``[e, bias]``: entity . item + item bias).

    ``entity_vectors(examples) -> (vectors, missing)`` and ``item_vectors(ids, anchor_times) ->
    (vectors, missing)``: point-in-time snapshots (:func:`snapshot_vectors`) or the model run at
    the anchor (:func:`entity_at_anchor`). An entity without a vector uses [0, .., 0, 1] (the item
    bias alone); a candidate without one ranks below every embedded candidate, by popularity.
    ``stats`` (optional dict) receives the missing shares."""
    def score(examples: pd.DataFrame, cands: CandidateSets) -> np.ndarray:
        E, N = cands.ids.shape
        anchors = examples["anchor_time"].to_numpy(np.int64)
        hv, hmiss = entity_vectors(examples)
        hv[hmiss] = 0.0
        hv[hmiss, -1] = 1.0
        out = np.empty((E, N), np.float64)
        pmiss_total, valid_total = 0, 0
        for lo in range(0, E, chunk):
            hi = min(lo + chunk, E)
            ids = cands.ids[lo:hi]
            pv, pmiss = item_vectors(ids.reshape(-1), np.repeat(anchors[lo:hi], N))
            s = np.einsum("end,ed->en", pv.reshape(hi - lo, N, -1), hv[lo:hi]).astype(np.float64)
            pmiss = pmiss.reshape(hi - lo, N)
            s[pmiss] = -1e9 + cands.counts[lo:hi][pmiss]
            out[lo:hi] = s
            valid = ids != PAD
            pmiss_total += int((pmiss & valid).sum())
            valid_total += int(valid.sum())
        if stats is not None:
            stats.update(entity_missing_share=float(hmiss.mean()) if E else 0.0,
                         candidate_missing_share=pmiss_total / max(valid_total, 1))
        return out
    return score


def snapshot_vectors(table: EmbeddingTable, entity_type: str, key: str | None = None) -> Callable:
    """Vectors from the embeddings file: the snapshot the plan admits at each anchor. With ``key``
    the function reads an examples frame (entity side), else ``(ids, anchor_times)`` (item side)."""
    if key is None:
        return lambda ids, anchors: table.lookup(entity_type, ids, anchors)
    return lambda ex: table.lookup(entity_type, ex[key].to_numpy(np.int64), ex["anchor_time"].to_numpy(np.int64))


class AnchorEmbedder:
    """The generic deep model run on the full data's graph: every sampled row is strictly older
    than the seed time, so an entity seeded at its anchor sees the revealed rows of the open
    session when the graph links them to it."""

    def __init__(self, model: DeepModel, dataset, task: str):
        if task not in model.net.heads:
            raise ValueError(f"--deep-model: the model has no head for task {task!r} (heads: {list(model.net.heads)})")
        self.model, self.task = model, task
        self.g = build_graph(dataset)
        self.feats = model.features(dataset, self.g)
        self._items: dict[int, dict[int, np.ndarray]] = {}

    def _rows(self, ntype: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = self.g.primary_keys[ntype]
        order = np.argsort(keys, kind="stable")
        pos = np.minimum(np.searchsorted(keys[order], ids), len(keys) - 1)
        known = keys[order][pos] == ids
        return order[pos], known

    def entity(self, entity_type: str, key: str) -> Callable:
        """``examples -> (vectors [e, 1], missing)``: each entity embedded at its anchor time."""
        def vectors(ex: pd.DataFrame):
            rows, known = self._rows(entity_type, ex[key].to_numpy(np.int64))
            emb = self.model.embed(self.g, self.feats, entity_type, rows, ex["anchor_time"].to_numpy(np.int64))
            return np.hstack([emb, np.ones((len(emb), 1), np.float32)]), ~known
        return vectors

    def item(self, item_type: str) -> Callable:
        """``(ids, anchor_times) -> (vectors [e, bias], missing)``: items embedded at the midnight
        starting the anchor's day (strictly before the anchor or at it; one pass per day)."""
        @torch.no_grad()
        def vectors(ids: np.ndarray, anchors: np.ndarray):
            days = anchors - anchors % NS_PER_DAY
            dim = self.model.net.cfg.embedding_dim + 1
            out = np.zeros((len(ids), dim), np.float32)
            missing = np.ones(len(ids), bool)
            for day in np.unique(days):
                sel = days == day
                cache = self._items.setdefault(int(day), {})
                new = np.setdiff1d(ids[sel], np.fromiter(cache, np.int64, len(cache)))
                rows, known = self._rows(item_type, new)
                if known.any():
                    emb = self.model.embed(self.g, self.feats, item_type, rows[known],
                                           np.full(int(known.sum()), day, np.int64))
                    bias = self.model.net.head(self.task, torch.from_numpy(emb).to(self.model.cfg.device)).cpu().numpy()
                    cache.update(zip(new[known].tolist(), np.hstack([emb, bias[:, None]]).astype(np.float32)))
                for j in np.flatnonzero(sel):
                    v = cache.get(int(ids[j]))
                    if v is not None:
                        out[j], missing[j] = v, False
            return out, missing
        return vectors


# ----- evaluation --------------------------------------------------------------------------------

def evaluate_scorers(examples: pd.DataFrame, cands: CandidateSets, scorers: dict[str, Callable],
                     ks=(10, 20, 50), log=print) -> dict:
    """Metrics per scorer on the same examples and candidates, with scoring time."""
    results, per_example = {}, {}
    for name, fn in scorers.items():
        t0, c0 = time.perf_counter(), time.process_time()
        scores = np.asarray(fn(examples, cands), np.float64)
        if scores.shape != cands.ids.shape:
            raise ValueError(f"scorer {name}: scores shape {scores.shape}, expected {cands.ids.shape}")
        scores = np.where(cands.excluded, -np.inf, scores)
        m = ranking_metrics(scores, cands.truth, ks)
        m = {k: v for k, v in m.items() if not (k.startswith("ndcg@") and int(k[5:]) > 20)}
        per_example[name] = _per_example(scores, cands.truth, ks, list(m))
        m["stderr"] = {k: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
                       for k, v in per_example[name].items()}
        m["examples"] = len(next(iter(per_example[name].values()), ()))  # the same for every scorer
        m["seconds"] = time.perf_counter() - t0
        m["cpu_seconds"] = time.process_time() - c0
        results[name] = m
        log(f"quality {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if "@" in k))
    if "popularity" in per_example:  # paired differences: same examples, same candidates
        base = per_example["popularity"]
        for name, vals in per_example.items():
            if name != "popularity":
                results[name]["minus_popularity"] = {
                    k: {"mean": float(np.mean(v - base[k])), "stderr": float(np.std(v - base[k], ddof=1) / np.sqrt(len(v)))}
                    for k, v in vals.items() if len(v) > 1}
    return results


def _per_example(scores: np.ndarray, truth, ks, names) -> dict[str, np.ndarray]:
    """Each example's metrics (``ranking_metrics`` row by row; examples without targets skipped)."""
    rows = [ranking_metrics(scores[i:i + 1], [t], ks) for i, t in enumerate(truth) if t[1] > 0]
    return {k: np.array([r[k] for r in rows]) for k in names}


def plot_quality(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    metrics = [k for k in report["models"][models[0]] if "@" in k and not isinstance(report["models"][models[0]][k], dict)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(models)
    x = np.arange(len(metrics))
    for i, name in enumerate(models):
        vals = [report["models"][name][m] for m in metrics]
        err = [report["models"][name].get("stderr", {}).get(m, 0.0) for m in metrics]
        bars = ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name, yerr=err, capsize=2)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ceiling = report["candidate_recall_ceiling"]
    ax.axhline(ceiling, color="grey", linestyle="--", linewidth=1,
               label=f"candidate-set recall ceiling {ceiling:.3f}")
    ax.set_xticks(x, metrics)
    ax.set_ylabel("mean over test examples (bars: +- 1 standard error)")
    ax.set_title(f"In-session recommendation, {report['project']}: {report['examples']} test sessions, "
                 f"{report['n_candidates']} candidates", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
def score_examples(model: RankingModel, table: EmbeddingTable, examples: pd.DataFrame, candidates, *,
                   tx: pd.DataFrame, plan: ServingPlan, device="cpu", progress: bool = True,
                   batch_size: int = 16) -> np.ndarray:
    """Scores of ranking examples' candidates (the quality report's entry point).

    ``candidates``: one id array shared by every example [N], a per-example matrix [E, N]
    whose negative entries are empty slots (scored ``-inf``), or a callable ``(i, example) ->
    ids``. Windows are replayed point-in-time from ``tx`` and tensors built by
    ``build_tensors`` (as in training and serving). Returns [E, N] (the widest row for a
    callable; shorter rows padded ``-inf``).
    """
    if callable(candidates):
        def ids_of(i, ex):
            return np.asarray(candidates(i, ex), np.int64)
        width = plan.max_candidates
    else:
        cands = np.asarray(candidates, np.int64)
        if cands.ndim == 1:
            cands = np.broadcast_to(cands, (len(examples), len(cands)))
        if cands.shape[0] != len(examples):
            raise ValueError(f"candidates: {cands.shape[0]} rows for {len(examples)} examples")
        width = cands.shape[1]

        def ids_of(i, ex):
            return cands[i]
    slots: dict[int, np.ndarray] = {}

    def choose(i, ex, _w):
        ids = ids_of(i, ex)
        keep = np.flatnonzero(ids >= 0) if not callable(candidates) else np.arange(len(ids))
        if len(keep) == 0:  # nothing to rank: one placeholder, scored and then dropped
            keep = np.zeros(1, np.int64)
            slots[i] = np.zeros(0, np.int64)
        else:
            slots[i] = keep
        return ids[keep] if len(slots[i]) else np.asarray([0], np.int64), np.zeros(len(keep), np.float32)

    rows = replay_ranking_rows(plan, tx, examples, choose, width, progress=progress, desc="replay (score)")
    scores = predict_rows(model, rows, table, batch_size=batch_size, device=device, progress=progress)
    if callable(candidates):
        return scores[:, :int(rows.n_candidates.max())]
    out = np.full((len(examples), width), -np.inf, np.float32)
    for i, keep in slots.items():
        out[i, keep] = scores[i, :len(keep)]
    return out


def _ts(ns: int):
    return np.datetime64(int(ns), "ns").astype("datetime64[s]")


def markdown_table(report: dict) -> str:
    """The quality table for docs/recsys.md (mean +- standard error)."""
    models = report["models"]
    cols = [k for k in next(iter(models.values())) if "@" in k]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f} ± {m['stderr'][c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def ceiling_table(ceilings: dict) -> str:
    """Recall ceiling per candidate source and N (mean share of targets; mean set size)."""
    sizes = [str(n) for n in ceilings["sizes"]]
    lines = ["| candidate source | " + " | ".join(f"N = {n}" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name, per in ceilings["recall"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{per[n]:.3f} ({ceilings['mean_size'][name][n]:.0f} items)" for n in sizes) + " |")
    return "\n".join(lines)


def run_ranking_quality(project: Project, dataset, split: dict, out_dir: Path, *, embeddings: Path | None,
                        model_path: Path | None, deep_model: Path | None = None, n_candidates: int = 1000,
                        max_examples: int = 2000, ks: tuple[int, ...] = (10, 20, 50), seed: int = 0,
                        device: str = "cpu", anchor_gnn: bool = True, ceiling_sizes: tuple[int, ...] | None = None,
                        progress: bool = True, log=print) -> tuple[dict, list[Path]]:
    """Rank the test sessions (``split``: ``train_cut_ns``, ``data_end_ns``) with popularity,
    buy-again, the deep model (snapshots from ``embeddings``; at the anchor from ``deep_model``,
    the generic model of ``train-deep``) and the distilled model (``model_path``); measure the
    candidate sources' recall ceilings; write ``quality.json`` + ``quality.png`` into ``out_dir``."""
    t_start = time.perf_counter()
    plan: ServingPlan = project.plan
    cols = RankingColumns.of(project)
    entity_type = project.foreign_keys(cols.facts)[cols.entity]
    item_type = project.foreign_keys(cols.facts)[cols.item]
    tx = dataset.table(cols.facts)
    test_start, test_end = int(split["train_cut_ns"]), int(split["data_end_ns"]) + 1
    all_test = ranking_examples(tx, cols, test_start, test_end)
    examples = ranking_examples(tx, cols, test_start, test_end, max_examples=max_examples, seed=seed)
    if examples.empty:
        raise ValueError(f"no test examples in [{_ts(test_start)}, {_ts(test_end)}] (too few rows?)")
    sampled = f"seeded sample, seed {seed}" if len(examples) < len(all_test) else "all"
    log(f"quality: {len(examples):,} of {len(all_test):,} test examples ({sampled}) "
        f"from {_ts(test_start)}; {n_candidates} candidates each")
    index = InteractionIndex(tx, cols)
    cands = candidate_sets(index, examples, n_candidates, progress=progress)
    sizes = tuple(ceiling_sizes or sorted({min(100, n_candidates), n_candidates}))
    t0 = time.perf_counter()
    ceilings = candidate_ceilings(index, CoOccurrence(tx, cols, test_start), examples, cols, cands.ids, sizes,
                                  progress=progress)
    ceilings["seconds"] = time.perf_counter() - t0
    scorers = {"popularity": popularity_scorer, "buy_again": buy_again_scorer(index, cols.entity),
               # the same rule on what the plan's window shows the ranker (its time range, newest rows)
               "buy_again_window": buy_again_scorer(index, cols.entity, plan.real_time_offset.ns,
                                                    plan.hops[0].max_len)}
    deep_stats: dict = {}
    table = None
    if embeddings is not None and Path(embeddings).exists():
        table = EmbeddingTable.from_parquet(embeddings, plan)
        items = snapshot_vectors(table, item_type)
        scorers["deep_gnn"] = deep_scorer(snapshot_vectors(table, entity_type, cols.entity), items, deep_stats)
    else:
        log(f"quality: {embeddings} not found: the deep model's snapshots are skipped (run `offline embed`)")
    anchor_model = deep_model is not None and Path(deep_model).exists()
    if anchor_gnn and anchor_model:
        heads = [t.name for t in project.tasks
                 if isinstance(t, NextItemTask) and (t.facts, t.item) == (cols.facts, cols.item)]
        if not heads:
            raise ValueError(f"base_tasks: no next_item task on {cols.facts}.{cols.item}: the deep model has no pair "
                             "score for it (or pass --no-anchor-gnn)")
        model = DeepModel.load(deep_model, device)
        anchor = AnchorEmbedder(model, dataset, heads[0])
        if table is not None and table.dim != model.net.cfg.embedding_dim + 1:
            raise ValueError(f"--embeddings: dimension {table.dim} does not fit the deep model {deep_model} "
                             f"(embedding_dim {model.net.cfg.embedding_dim} + 1)")
        # items from the snapshots when there are any, so that only the entity side differs from deep_gnn
        scorers["deep_gnn_entity_at_anchor"] = deep_scorer(anchor.entity(entity_type, cols.entity),
                                                           items if table is not None else anchor.item(item_type))
    if model_path is not None:
        if table is None:
            raise ValueError("the distilled model needs the deep embeddings (--embeddings or RUN/embeddings.parquet)")
        ranker = load_model(model_path, plan, device)

        def distilled(ex, c):
            return score_examples(ranker, table, ex, c.ids, tx=tx, plan=plan, device=device, progress=progress)
        scorers["distilled"] = distilled
    models = evaluate_scorers(examples, cands, scorers, ks, log=log)
    report = {
        "task": "in-session next items: half of each test session revealed, rank the rest",
        "project": project.name, "columns": cols.__dict__,
        "test_period": [str(_ts(test_start)), str(_ts(test_end))], "train_cut_ns": test_start,
        "examples": len(examples), "test_examples_available": len(all_test), "sample_seed": seed,
        "example_sessions": examples[cols.session].astype(np.int64).tolist(),
        "n_candidates": n_candidates, "candidates": "catalog top-N by rows in the 28 days before the anchor; "
                                                    "revealed items removed for every model",
        "candidate_recall_ceiling": cands.ceiling, "candidate_ceilings": ceilings,
        "targets_per_example": float(examples["targets"].map(len).mean()),
        "models": models, "deep_embeddings": str(embeddings) if table is not None else None,
        "deep_model": str(deep_model) if anchor_gnn and anchor_model else None,
        "deep_scoring": "deep_gnn: point-in-time snapshots of entity and item (plan offsets), dot(entity, item) = "
                        "the deep model's pair score incl. item bias; deep_gnn_entity_at_anchor: the entity vector "
                        "from the deep model run at the anchor (sees the revealed rows), items from the snapshots "
                        "(or the model at the anchor's midnight without embeddings)",
        "deep_missing": deep_stats, "distilled_model": str(model_path) if model_path else None,
        "seconds_total": time.perf_counter() - t_start,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_json, out_png = out_dir / "quality.json", out_dir / "quality.png"
    write_json(out_json, report)
    plot_quality(report, out_png)
    log(json.dumps({name: {k: round(v, 4) for k, v in m.items() if "@" in k} for name, m in models.items()}))
    log(markdown_table(report))
    log(ceiling_table(ceilings))
    log(f"quality: ceiling {cands.ceiling:.3f}; {report['seconds_total']:.0f}s -> {out_json}, {out_png}")
    return report, [out_json, out_png]
