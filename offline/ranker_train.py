"""Training rows for the distilled ranker by point-in-time replay, the training loop, and scoring.

Rows. Purchase lines are replayed in event-time order through :class:`rti_store.MemoryWindowStore`
(appends via :func:`schemas.tensors.interactions_of`), exactly as :mod:`offline.distill` does for
fraud. A ranking example (household h, anchor T, targets; see ``offline/recsys_tasks.py``
``ranking_examples``) is read when every line with time < T has been appended: its window is
read as of T (``window_keys`` + ``read_many``; the store's half-open bounds hide anything at or
after T), its candidates are chosen, and its tensors are built by
:func:`schemas.tensors.build_tensors` with ``candidates=`` — the call the online recommender makes.
Only lines of the examples' households, in ``[first anchor - real_time_offset, last anchor)``,
are replayed (windows are per household, so other lines could never be read).

Candidates of a training example: its targets (at most ``max_positives``, seeded) plus
``n_negatives`` distinct non-target products: a share drawn popularity-proportionally and a
share uniformly from the popular products before the example's day (``popular_products``, lines
strictly before the day start, so no future line is used), and a share from the household's own
window (products bought before but not now: without them "bought before" would be a free signal).
Products revealed in the open basket are never negatives (they are never ranked).

Loss: sampled softmax — each positive against the example's negatives,
``-log(e^{s_pos} / (e^{s_pos} + sum_neg e^{s_neg}))`` — or per-candidate BCE; optionally mixed
with the deep model's pair scores as soft targets (``soft_weight``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from offline.embeddings import EmbeddingTable
from offline.recsys_tasks import PurchaseIndex
from offline.ranker import RankerConfig, RankerModel, build_ranker, prepare_ranking_batch, score_ranking
from schemas.plan import ServingPlan
from schemas.tensors import PAD_CANDIDATE, build_tensors, interactions_of, stack_requests, window_keys

NS_PER_DAY = 86_400 * 10**9
EXAMPLE_COLUMNS = ("household_id", "anchor_time", "targets")


# ----- rows ----------------------------------------------------------------------------------

@dataclass
class RankingRows:
    """Per-example model inputs as built by ``build_tensors``: history kept padded to ``max_len``,
    candidates padded with ``PAD_CANDIDATE``; ``labels`` 1 = target. ``request(i)`` gives back
    example i's tensors in the seed's shapes, equal to what ``build_tensors`` returned."""

    plan: ServingPlan
    example_index: np.ndarray  # [N] position of the example in the examples frame
    scalars: dict[str, np.ndarray]  # anchor + fact tensors (not the candidates), [N]
    sequences: dict[str, np.ndarray]  # RTI tensors [N, max_len], oldest first
    lengths: np.ndarray  # [N] history length (one hop)
    candidates: np.ndarray  # [N, C] int64
    n_candidates: np.ndarray  # [N]
    labels: np.ndarray  # [N, C] float32

    def __len__(self) -> int:
        return len(self.example_index)

    @classmethod
    def allocate(cls, plan: ServingPlan, n: int, max_candidates: int) -> "RankingRows":
        scalars, sequences = {}, {}
        for spec in plan.tensors:
            if spec.kind == "rti":
                sequences[spec.name] = np.zeros((n, plan.hop(spec.hop_key).max_len), spec.numpy_dtype)
            elif spec.kind != "candidate":
                scalars[spec.name] = np.zeros(n, spec.numpy_dtype)
        return cls(plan, np.zeros(n, np.int64), scalars, sequences, np.zeros(n, np.int32),
                   np.full((n, max_candidates), PAD_CANDIDATE, np.int64), np.zeros(n, np.int32),
                   np.zeros((n, max_candidates), np.float32))

    def put(self, i: int, example_index: int, tensors: dict, labels: Sequence[float]) -> None:
        self.example_index[i] = example_index
        for spec in self.plan.tensors:
            arr = np.asarray(tensors[spec.name]).reshape(-1)
            if spec.kind == "rti":
                self.sequences[spec.name][i, :len(arr)] = arr
                self.lengths[i] = len(arr)
            elif spec.kind == "candidate":
                if len(arr) > self.candidates.shape[1]:
                    raise ValueError(f"{spec.name}: {len(arr)} candidates > room for {self.candidates.shape[1]}")
                self.candidates[i, :len(arr)] = arr
                self.n_candidates[i] = len(arr)
                self.labels[i, :len(arr)] = labels
            else:
                self.scalars[spec.name][i] = arr[0]

    def request(self, i: int) -> dict[str, np.ndarray]:
        out = {}
        for spec in self.plan.tensors:
            if spec.kind == "rti":
                n = int(self.lengths[i])
                out[spec.name] = self.sequences[spec.name][i, :n].reshape(1, n, 1)
            elif spec.kind == "candidate":
                n = int(self.n_candidates[i])
                out[spec.name] = self.candidates[i, :n].reshape(1, n, 1)
            else:
                out[spec.name] = self.scalars[spec.name][i:i + 1].reshape(1, 1)
        return out

    def batch(self, idx: Sequence[int]) -> dict[str, np.ndarray]:
        return stack_requests(self.plan, [self.request(int(i)) for i in idx])

    def take(self, idx) -> "RankingRows":
        idx = np.asarray(idx)
        return RankingRows(self.plan, self.example_index[idx], {k: v[idx] for k, v in self.scalars.items()},
                           {k: v[idx] for k, v in self.sequences.items()}, self.lengths[idx], self.candidates[idx],
                           self.n_candidates[idx], self.labels[idx])


def check_examples(examples: pd.DataFrame) -> None:
    for col in EXAMPLE_COLUMNS:
        if col not in examples.columns:
            raise ValueError(f"examples.{col}: missing column (have {list(examples.columns)})")
    if len(examples) == 0:
        raise ValueError("examples: no ranking example")


CandidateFn = Callable[[int, object, dict], tuple[Sequence[int], Sequence[float]]]


def replay_ranking_rows(plan: ServingPlan, transactions: pd.DataFrame, examples: pd.DataFrame,
                        choose: CandidateFn, max_candidates: int, progress: bool = True,
                        store_factory: Callable | None = None, desc: str = "replay") -> RankingRows:
    """Rows of ``examples`` (columns household_id, anchor_time, targets), point-in-time.

    ``choose(i, example, windows)`` returns the candidates of example i and their labels; it
    sees the example and its windows as of the anchor (nothing later). Rows come back in the
    order of the examples frame.
    """
    from rti_store import MemoryWindowStore

    check_examples(examples)
    table = plan.fact_table
    hop_col = plan.hops[0].key.source.column
    anchors = examples["anchor_time"].to_numpy(np.int64)
    households = examples[hop_col].to_numpy(np.int64)
    lo, _ = plan.rti_bounds(int(anchors.min()))
    tcol = plan.fact.time_column
    tx = transactions[(transactions[tcol] >= lo) & (transactions[tcol] < anchors.max())
                      & transactions[plan.hops[0].key.target.column].isin(np.unique(households))]
    tx = tx.sort_values([tcol, plan.fact.primary_key], kind="stable")
    columns = list(plan.interaction_columns[table])
    col_values = [tx[c].to_numpy().tolist() for c in columns]
    line_times = tx[tcol].to_numpy(np.int64)
    order = np.argsort(anchors, kind="stable")
    rows = RankingRows.allocate(plan, len(examples), max_candidates)
    store = (store_factory or MemoryWindowStore)(plan)
    pos = 0
    records = examples.reset_index(drop=True)
    bar = tqdm(total=len(order), desc=desc, unit="example", disable=not progress, mininterval=1.0)
    for start in range(0, len(order), 256):
        chunk = order[start:start + 256]
        # Examples with equal anchors are read together after the lines strictly before them.
        for T in np.unique(anchors[chunk]):
            end = int(np.searchsorted(line_times, T, side="left"))
            if end > pos:
                items = []
                for vals in zip(*(v[pos:end] for v in col_values)):
                    items.extend(interactions_of(plan, table, dict(zip(columns, vals))))
                store.append(items)
                pos = end
            same = chunk[anchors[chunk] == T]
            keys, fact_rows = [], []
            for i in same:
                fact = {hop_col: int(households[i])}
                fact_rows.append(fact)
                keys.extend(window_keys(plan, fact))
            windows = store.read_many(keys, int(T))
            n_hops = len(plan.hops)
            for k, i in enumerate(same):
                wins = {hk: w for (hk, _), w in zip(keys[k * n_hops:(k + 1) * n_hops],
                                                    windows[k * n_hops:(k + 1) * n_hops])}
                cands, labels = choose(int(i), records.iloc[int(i)], wins)
                tensors = build_tensors(plan, fact_rows[k], wins, anchor_time=int(T), candidates=list(cands))
                rows.put(int(i), int(i), tensors, labels)
        bar.update(len(chunk))
    bar.close()
    store.close()
    return rows


# ----- candidates ------------------------------------------------------------------------------

class DailyPopularity:
    """``popular_products`` at the start of each day (lines strictly before it), cached per day:
    ``at(t)`` -> ``(product ids, purchase lines)``, most bought first."""

    def __init__(self, transactions: pd.DataFrame | PurchaseIndex, n: int, days: float = 28):
        self.index = transactions if isinstance(transactions, PurchaseIndex) else PurchaseIndex(transactions)
        self.n, self.days = n, days
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def at(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        day = int(t) - int(t) % NS_PER_DAY
        if day not in self._cache:
            ids, counts = self.index.popular(day, self.n, self.days)
            self._cache[day] = (ids.astype(np.int64), counts.astype(np.int64))
        return self._cache[day]


@dataclass(frozen=True)
class SamplingConfig:
    n_negatives: int = 64
    max_positives: int = 16
    popularity_share: float = 0.4  # popularity-proportional among the popular products
    history_share: float = 0.2  # from the household's own window; the rest uniform over the popular list
    popular_n: int = 2000  # size of the popular list negatives come from


class TrainingCandidates:
    """``choose`` for training rows: targets + seeded negatives (see the module docstring)."""

    def __init__(self, popularity: DailyPopularity, cfg: SamplingConfig, hop_key: str, item_column: str, seed: int):
        self.pop, self.cfg, self.hop_key, self.item_column = popularity, cfg, hop_key, item_column
        self.seed = seed

    def __call__(self, i: int, example, windows: dict):
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, i])  # per example: independent of the replay order
        targets = np.unique(np.asarray(example["targets"], np.int64))
        if len(targets) > cfg.max_positives:
            targets = np.sort(rng.choice(targets, cfg.max_positives, replace=False))
        ids, counts = self.pop.at(int(example["anchor_time"]))
        history = np.unique(np.asarray(windows[self.hop_key].columns[self.item_column], np.int64))
        n_hist = int(round(cfg.n_negatives * cfg.history_share))
        n_pop = int(round(cfg.n_negatives * cfg.popularity_share))
        pools = [rng.permutation(history)[:3 * n_hist] if len(history) else np.zeros(0, np.int64),
                 rng.choice(ids, 3 * n_pop, p=counts / counts.sum()) if len(ids) else np.zeros(0, np.int64),
                 rng.choice(ids, 3 * cfg.n_negatives) if len(ids) else np.zeros(0, np.int64)]
        # Products already in the open basket are never negatives: every ranking of the quality
        # report and the recommender leaves them out, and as negatives they would teach "like
        # the session -> unlikely", the opposite of the in-session effect.
        revealed = example["revealed_products"] if "revealed_products" in example else ()
        taken = set(targets.tolist()) | set(np.asarray(revealed, np.int64).tolist())
        neg: list[int] = []

        def take(pool: np.ndarray, quota: int) -> None:
            added = 0
            for p in pool.tolist():
                if added >= quota or len(neg) >= cfg.n_negatives:
                    return
                if p not in taken:
                    taken.add(p)
                    neg.append(p)
                    added += 1

        take(pools[0], n_hist)
        take(pools[1], n_pop)
        take(pools[2], cfg.n_negatives - len(neg))  # uniform tops up to n_negatives
        cands = np.concatenate([targets, np.asarray(neg, np.int64)])
        labels = np.concatenate([np.ones(len(targets), np.float32), np.zeros(len(neg), np.float32)])
        perm = rng.permutation(len(cands))  # positions carry no label information
        return cands[perm], labels[perm]


# ----- training --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankerTrainConfig:
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "softmax"  # "softmax" (sampled softmax) | "bce"
    # Weight of the deep model's pair scores as soft targets (0 = off): KL between the softmax of
    # dot(household, product) over the example's candidates (the recsys_embed vector layout makes
    # that dot product the GNN's pair score) and the ranker's softmax.
    soft_weight: float = 0.0
    seed: int = 0
    device: str = "cpu"
    model: RankerConfig = field(default_factory=RankerConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


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
    """The deep model's score of each (household, candidate) pair [B, N] and where it exists."""
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


def _batches(n: int, size: int, rng: np.random.Generator | None = None):
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    for lo in range(0, n, size):
        yield idx[lo:lo + size]


def train_ranker(rows: RankingRows, table: EmbeddingTable, cfg: RankerTrainConfig = RankerTrainConfig(),
                 progress: bool = True, log=print, eval_fn: Callable[[RankerModel], dict] | None = None):
    """Fit the ranker on training rows; returns ``(model, info)``."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    plan = rows.plan
    model = build_ranker(plan, table.dim, cfg.model, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(rows) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    history = []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(list(_batches(len(rows), cfg.batch_size, rng)), desc=f"ranker epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, unit="batch", mininterval=2.0)
        for idx in bar:
            stacked = rows.batch(idx)
            feats = prepare_ranking_batch(plan, stacked, table, model.layout, model.config, device)
            logits = model(feats)
            n = logits.shape[1]
            labels = torch.from_numpy(rows.labels[idx, :n]).to(device)
            loss = ranking_loss(logits, labels, feats["candidate_valid"], cfg.loss)
            if cfg.soft_weight > 0:
                deep, ok = deep_pair_scores(feats)
                loss = (1 - cfg.soft_weight) * loss + cfg.soft_weight * soft_target_loss(logits, deep, ok)
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
        log(f"ranker epoch {epoch + 1}: {entry}")
    model.eval()
    return model, {"history": history, "seconds_train": time.perf_counter() - t0, "rows": len(rows),
                   "positives": int(rows.labels.sum()), "parameters": model.count_parameters()}


# ----- scoring ---------------------------------------------------------------------------------

@torch.no_grad()
def score_rows(model: RankerModel, rows: RankingRows, table: EmbeddingTable, batch_size: int = 32,
               device="cpu", progress: bool = False) -> np.ndarray:
    """Scores [N, C] of the rows' candidates (padding -inf)."""
    model.eval()
    out = np.full(rows.candidates.shape, -np.inf, np.float32)
    for idx in tqdm(list(_batches(len(rows), batch_size)), desc="rank", disable=not progress, unit="batch"):
        scores, _, _ = score_ranking(model, rows.plan, rows.batch(idx), table, device)
        out[idx, :scores.shape[1]] = scores
    return out


def score_examples(model: RankerModel, table: EmbeddingTable, examples: pd.DataFrame, candidates, *,
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
    scores = score_rows(model, rows, table, batch_size=batch_size, device=device, progress=progress)
    if callable(candidates):
        return scores[:, :int(rows.n_candidates.max())]
    out = np.full((len(examples), width), -np.inf, np.float32)
    for i, keep in slots.items():
        out[i, keep] = scores[i, :len(keep)]
    return out


__all__ = ["DailyPopularity", "RankerTrainConfig", "RankingRows", "SamplingConfig", "TrainingCandidates",
           "check_examples", "deep_pair_scores", "ranking_loss", "soft_target_loss", "replay_ranking_rows", "score_examples", "score_rows",
           "train_ranker"]
