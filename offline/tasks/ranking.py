"""In-session ranking on a fact table of interactions (entity, item, time, session): examples,
candidate sources, baselines and metrics.

The columns come from the project (:meth:`RankingColumns.of`: the next-item task's facts,
entity link, item column and session column; the facts' time column). A session is a group of
rows with the same session key (a basket, a visit) whose rows have distinct times, so it is a
sequence of events. A **ranking example** is one session cut at its reveal point ``r``
(default: half of it, at least one row, :func:`reveal_half`):

* the entity key and the session key (under the data's own column names);
* ``anchor_time`` T = the time of row ``r`` (the first hidden row). Everything a scorer may see
  is strictly older than T: the revealed rows ``0..r-1`` of the open session and the entity's
  earlier rows;
* ``revealed`` = ``r`` and ``revealed_items`` (their distinct items);
* ``targets`` = the distinct items of rows ``r..`` that are not among the revealed ones (what
  the rest of the session will add). Examples without targets are dropped.

:class:`InteractionIndex` answers "strictly before t" questions: the catalog top-N (rows per
item in ``[t - days, t)``), an entity's past items. :class:`CoOccurrence` counts items sharing a
session, on rows before a cut. ``popularity_scores`` / ``buy_again_scores`` are the baselines of
the quality report, :func:`ranking_metrics` its recall@k / NDCG@k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from offline.data.spec import NextItemTask, Project
from offline.datasets.base import NS_PER_DAY

EXAMPLE_FIELDS = ("anchor_time", "session_time", "n_rows", "revealed", "revealed_items", "targets")


class RankingTaskError(ValueError):
    """Bad input to a ranking task; the message names the column or argument."""


@dataclass(frozen=True)
class RankingColumns:
    """Where a ranking task reads the fact table: its name and the columns of time, entity key,
    item key and session key."""

    facts: str
    time: str
    entity: str
    item: str
    session: str

    @classmethod
    def of(cls, project: Project) -> "RankingColumns":
        """From the serving task when it is ``next_item``, else the first ``next_item`` base task."""
        serving = project.spec.serving.task if project.spec.serving is not None else None
        if isinstance(serving, NextItemTask):
            task, where = serving, "serving.task"
        else:
            found = [(i, t) for i, t in enumerate(project.tasks) if isinstance(t, NextItemTask)]
            if not found:
                raise RankingTaskError("base_tasks: a ranking task needs a next_item task (entity, facts, item)")
            task, where = found[0][1], f"base_tasks[{found[0][0]}]"
        time = project.spec.tables[task.facts].time_column
        return cls(task.facts, time, project.link_column(task.facts, task.entity, task.via), task.item,
                   project.session_column(task, where))

    @property
    def example_columns(self) -> tuple[str, ...]:
        return (self.entity, self.session, *EXAMPLE_FIELDS)

    def check(self, frame: pd.DataFrame, needed=None) -> None:
        for col in needed or (self.time, self.entity, self.item, self.session):
            if col not in frame.columns:
                raise RankingTaskError(f"{col}: missing column in {self.facts} (has {list(frame.columns)})")


def reveal_half(n_rows: np.ndarray) -> np.ndarray:
    """Default reveal point: half the session (rounded down), at least one row."""
    return np.maximum(1, np.asarray(n_rows) // 2)


def _reveal_points(reveal, n_rows: np.ndarray) -> np.ndarray:
    if callable(reveal):
        r = np.asarray(reveal(n_rows), np.int64)
    elif isinstance(reveal, float) and 0.0 < reveal < 1.0:
        r = np.maximum(1, np.floor(n_rows * reveal).astype(np.int64))
    elif isinstance(reveal, (int, np.integer)) and not isinstance(reveal, bool) and reveal >= 1:
        r = np.full(len(n_rows), int(reveal), np.int64)
    else:
        raise RankingTaskError(f"reveal: expected a callable, a fraction in (0, 1) or a row count >= 1, got {reveal!r}")
    if r.shape != n_rows.shape:
        raise RankingTaskError(f"reveal: returned shape {r.shape} for {n_rows.shape} sessions")
    return r


def ranking_examples(facts: pd.DataFrame, cols: RankingColumns, start_ns: int, end_ns: int, *, min_rows: int = 2,
                     reveal: Callable[[np.ndarray], np.ndarray] | float | int = reveal_half,
                     max_examples: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One ranking example per session whose first row lies in ``[start_ns, end_ns)`` and that
    has at least ``min_rows`` rows and a reveal point ``1 <= r < n_rows``; columns
    ``cols.example_columns``, sorted by anchor time. ``max_examples`` keeps a seeded uniform
    sample of the sessions. ``revealed_items``/``targets`` hold int64 arrays."""
    cols.check(facts)
    if min_rows < 2:
        raise RankingTaskError(f"min_rows: must be >= 2 (one revealed and one hidden row), got {min_rows}")
    t = facts[cols.time].to_numpy(np.int64)
    session = facts[cols.session].to_numpy(np.int64)
    # Rows of each session in time order.
    order = np.lexsort((t, session))
    s_sorted, t_sorted = session[order], t[order]
    first = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    n_rows = np.diff(np.r_[first, len(order)])
    session_time = t_sorted[first]
    r = _reveal_points(reveal, n_rows)
    keep = (session_time >= start_ns) & (session_time < end_ns) & (n_rows >= min_rows) & (r >= 1) & (r < n_rows)
    idx = np.flatnonzero(keep)
    if max_examples is not None and len(idx) > max_examples:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(max_examples), replace=False))
    item_sorted = facts[cols.item].to_numpy(np.int64)[order]
    entity_sorted = facts[cols.entity].to_numpy(np.int64)[order]
    names = cols.example_columns
    rows = {c: [] for c in names}
    for i in idx:
        lo, ri = first[i], int(r[i])
        items = item_sorted[lo:lo + n_rows[i]]
        shown = np.unique(items[:ri])
        targets = np.unique(items[ri:])
        targets = targets[~np.isin(targets, shown)]
        if len(targets) == 0:
            continue
        for col, value in zip(names, (int(entity_sorted[lo]), int(s_sorted[lo]), int(t_sorted[lo + ri]),
                                      int(session_time[i]), int(n_rows[i]), ri, shown, targets)):
            rows[col].append(value)
    out = pd.DataFrame({c: pd.Series(v, dtype=object if c in ("revealed_items", "targets") else np.int64)
                        for c, v in rows.items()})
    return out.sort_values(["anchor_time", cols.session], kind="stable").reset_index(drop=True)


class InteractionIndex:
    """The rows of a fact table indexed for "strictly before t" queries: catalog popularity over
    a look-back window and an entity's past items. Built once, queried per anchor."""

    def __init__(self, facts: pd.DataFrame, cols: RankingColumns):
        cols.check(facts, (cols.time, cols.entity, cols.item))
        t = facts[cols.time].to_numpy(np.int64)
        item = facts[cols.item].to_numpy(np.int64)
        by_time = np.argsort(t, kind="stable")
        self.time, self.item = t[by_time], item[by_time]
        ent = facts[cols.entity].to_numpy(np.int64)
        by_ent = np.lexsort((t, ent))
        self.ent_sorted, self.ent_time, self.ent_item = ent[by_ent], t[by_ent], item[by_ent]

    def popular(self, t: int, n: int, days: float = 28) -> tuple[np.ndarray, np.ndarray]:
        """``(item ids, row counts)`` of the ``n`` most frequent items in ``[t - days, t)``;
        ties broken by item id (ascending)."""
        if n < 1:
            raise RankingTaskError(f"n: must be >= 1, got {n}")
        lo, hi = np.searchsorted(self.time, [int(t) - int(days * NS_PER_DAY), int(t)], side="left")
        ids, counts = np.unique(self.item[lo:hi], return_counts=True)
        top = np.lexsort((ids, -counts))[:n]
        return ids[top], counts[top]

    def _entity_rows(self, entity: int, t: int, window_ns: int | None, max_rows: int | None) -> slice:
        lo = np.searchsorted(self.ent_sorted, entity, side="left")
        hi = np.searchsorted(self.ent_sorted, entity, side="right")
        end = lo + np.searchsorted(self.ent_time[lo:hi], int(t), side="left")
        if window_ns is not None:
            lo = lo + np.searchsorted(self.ent_time[lo:end], int(t) - int(window_ns), side="left")
        if max_rows is not None:
            lo = max(lo, end - int(max_rows))
        return slice(lo, end)

    def entity_counts(self, entity: int, t: int, window_ns: int | None = None,
                      max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(item ids, row counts)`` of the entity's rows strictly before ``t``; with
        ``window_ns``/``max_rows`` only the newest ``max_rows`` of ``[t - window_ns, t)`` (what the
        plan's real-time window holds)."""
        return np.unique(self.ent_item[self._entity_rows(entity, t, window_ns, max_rows)], return_counts=True)

    def entity_items(self, entity: int, t: int) -> np.ndarray:
        """The entity's distinct items strictly before ``t``, most frequent first, then most recent."""
        rows = self._entity_rows(entity, t, None, None)
        ids, inverse, counts = np.unique(self.ent_item[rows], return_inverse=True, return_counts=True)
        last = np.zeros(len(ids), np.int64)
        np.maximum.at(last, inverse, self.ent_time[rows])
        return ids[np.lexsort((-last, -counts))]


class CoOccurrence:
    """How often two items share a session, counted on rows strictly before ``before_ns`` (for a
    test period: its start, so no test row is used)."""

    def __init__(self, facts: pd.DataFrame, cols: RankingColumns, before_ns: int):
        cols.check(facts, (cols.time, cols.item, cols.session))
        keep = facts[cols.time].to_numpy(np.int64) < int(before_ns)
        session = facts[cols.session].to_numpy(np.int64)[keep]
        item = facts[cols.item].to_numpy(np.int64)[keep]
        pairs = np.unique(np.stack([session, item], 1), axis=0) if len(item) else np.zeros((0, 2), np.int64)
        # sessions of an item (item-sorted) and items of a session (session-sorted)
        self._by_item = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]
        self._by_session = pairs
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _of(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        if item not in self._cache:
            lo, hi = np.searchsorted(self._by_item[:, 1], [item, item + 1])
            sessions = self._by_item[lo:hi, 0]
            starts = np.searchsorted(self._by_session[:, 0], sessions, side="left")
            ends = np.searchsorted(self._by_session[:, 0], sessions, side="right")
            size = ends - starts
            rows = np.arange(size.sum()) + np.repeat(starts - (np.cumsum(size) - size), size)
            ids, counts = np.unique(self._by_session[rows, 1], return_counts=True)
            other = ids != item
            self._cache[item] = (ids[other], counts[other])
        return self._cache[item]

    def items(self, shown: np.ndarray) -> np.ndarray:
        """Items that shared a session with any of ``shown``, by summed count (ties by id), ``shown``
        themselves left out."""
        parts = [self._of(int(i)) for i in np.unique(np.asarray(shown, np.int64))]
        if not parts:
            return np.zeros(0, np.int64)
        ids, inverse = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
        total = np.bincount(inverse, weights=np.concatenate([p[1] for p in parts]), minlength=len(ids))
        keep = ~np.isin(ids, shown)
        ids, total = ids[keep], total[keep]
        return ids[np.lexsort((ids, -total))]


# ----- baselines (scores [n_candidates], higher is better) ------------------------------------

def popularity_scores(candidate_counts: np.ndarray) -> np.ndarray:
    """Popularity baseline: the candidates' rows in the look-back window."""
    return np.asarray(candidate_counts, np.float64)


def buy_again_scores(index: InteractionIndex, entity: int, anchor_time: int, candidates: np.ndarray,
                     candidate_counts: np.ndarray, window_ns: int | None = None,
                     max_rows: int | None = None) -> np.ndarray:
    """"Buy it again": how often the entity took each candidate strictly before the anchor
    (earlier sessions and the revealed rows of the open one; optionally only the plan's window,
    see :meth:`InteractionIndex.entity_counts`), popularity as the tie-break (a fraction < 1, so
    it never outweighs one repeat)."""
    ids, counts = index.entity_counts(entity, anchor_time, window_ns, max_rows)
    candidates = np.asarray(candidates, np.int64)
    own = np.zeros(len(candidates), np.float64)
    if len(ids):
        pos = np.minimum(np.searchsorted(ids, candidates), len(ids) - 1)
        hit = ids[pos] == candidates
        own[hit] = counts[pos[hit]]
    pop = np.asarray(candidate_counts, np.float64)
    return own + pop / (pop.max() + 1.0 if len(pop) else 1.0)


def ranking_metrics(scores: np.ndarray, truth: list[tuple[np.ndarray, int]], ks) -> dict:
    """Mean recall@k and NDCG@k over rows; ``scores`` [rows, candidates], ``truth`` per row the
    candidate positions of its targets and its number of targets (targets outside the
    candidates count against recall)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {}
    for k in ks:
        rec, ndcg = [], []
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        for i, (pos, n_true) in enumerate(truth):
            if n_true == 0:
                continue
            hit = np.isin(order[i, :k], pos)
            rec.append(hit.sum() / n_true)
            ideal = disc[:min(n_true, k)].sum()
            ndcg.append((hit * disc).sum() / ideal)
        out[f"recall@{k}"] = float(np.mean(rec)) if rec else float("nan")
        out[f"ndcg@{k}"] = float(np.mean(ndcg)) if ndcg else float("nan")
    return out


__all__ = ["CoOccurrence", "EXAMPLE_FIELDS", "InteractionIndex", "RankingColumns", "RankingTaskError",
           "buy_again_scores", "popularity_scores", "ranking_examples", "ranking_metrics", "reveal_half"]
