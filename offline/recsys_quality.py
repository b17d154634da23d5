"""Quality of in-session recommendations: baselines, the deep model and the distilled ranker
ranked on the same test examples and candidates (``relstream offline recsys-quality``).

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

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from offline.recsys_tasks import PurchaseIndex, buy_again_scores, popularity_scores
from offline.train_recsys import ranking_metrics

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
