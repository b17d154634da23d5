"""In-session recommendation tasks on purchase lines in session order (issue #9).

The data (``offline/datasets/complete_journey.py``) gives each line of a basket its own time
``basket_time + i`` ns, so a basket is a sequence of session events. A **ranking example** is
one basket cut at its reveal point ``r`` (default: half the basket, at least one line,
``reveal_half``):

* ``household_id``, ``basket_id``;
* ``anchor_time`` T = the time of line ``r`` (the first hidden line). Everything a scorer may
  see is strictly older than T: the revealed lines ``0..r-1`` of the open basket (times < T)
  and the household's earlier baskets;
* ``revealed`` = ``r`` and ``revealed_products`` (their distinct products);
* ``targets`` = the distinct products of lines ``r..`` that are not among the revealed ones
  (what the rest of the session will add). Examples without targets are dropped.

``popular_products(tx, t, n)`` is the catalog top-N (purchase lines per product in
``[t - days, t)``, strictly before t) used as the candidate set; ``buy_again_scores`` and
``popularity_scores`` are the two baselines of the quality report.

Inputs are frames with the plan's ``transactions`` columns (transaction_timestamp int64 ns,
household_id, product_id, basket_id); a missing column is named in the error.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from offline.datasets.base import NS_PER_DAY

TIME, HOUSEHOLD, PRODUCT, BASKET = "transaction_timestamp", "household_id", "product_id", "basket_id"
EXAMPLE_COLUMNS = ("household_id", "basket_id", "anchor_time", "basket_time", "n_lines", "revealed",
                   "revealed_products", "targets")


class RecsysTaskError(ValueError):
    """Bad input to a recsys task; the message names the column or argument."""


def reveal_half(n_lines: np.ndarray) -> np.ndarray:
    """Default reveal point: half the basket (rounded down), at least one line."""
    return np.maximum(1, np.asarray(n_lines) // 2)


def _check_columns(tx: pd.DataFrame, cols) -> None:
    for col in cols:
        if col not in tx.columns:
            raise RecsysTaskError(f"{col}: missing column in transactions (has {list(tx.columns)})")


def _reveal_points(reveal, n_lines: np.ndarray) -> np.ndarray:
    if callable(reveal):
        r = np.asarray(reveal(n_lines), np.int64)
    elif isinstance(reveal, float) and 0.0 < reveal < 1.0:
        r = np.maximum(1, np.floor(n_lines * reveal).astype(np.int64))
    elif isinstance(reveal, (int, np.integer)) and not isinstance(reveal, bool) and reveal >= 1:
        r = np.full(len(n_lines), int(reveal), np.int64)
    else:
        raise RecsysTaskError(f"reveal: expected a callable, a fraction in (0, 1) or a line count >= 1, got {reveal!r}")
    if r.shape != n_lines.shape:
        raise RecsysTaskError(f"reveal: returned shape {r.shape} for {n_lines.shape} baskets")
    return r


def ranking_examples(tx: pd.DataFrame, start_ns: int, end_ns: int, *, min_lines: int = 2,
                     reveal: Callable[[np.ndarray], np.ndarray] | float | int = reveal_half,
                     max_examples: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One ranking example per basket whose first line lies in ``[start_ns, end_ns)`` and that
    has at least ``min_lines`` lines and a reveal point ``1 <= r < n_lines``; columns
    :data:`EXAMPLE_COLUMNS`, sorted by anchor time. ``max_examples`` keeps a seeded uniform
    sample of the baskets. ``revealed_products``/``targets`` hold int64 arrays."""
    _check_columns(tx, (TIME, HOUSEHOLD, PRODUCT, BASKET))
    if min_lines < 2:
        raise RecsysTaskError(f"min_lines: must be >= 2 (one revealed and one hidden line), got {min_lines}")
    t = tx[TIME].to_numpy(np.int64)
    basket = tx[BASKET].to_numpy(np.int64)
    # Lines of each basket in session (time) order.
    order = np.lexsort((t, basket))
    b_sorted, t_sorted = basket[order], t[order]
    first = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    n_lines = np.diff(np.r_[first, len(order)])
    basket_time = t_sorted[first]
    r = _reveal_points(reveal, n_lines)
    keep = (basket_time >= start_ns) & (basket_time < end_ns) & (n_lines >= min_lines) & (r >= 1) & (r < n_lines)
    idx = np.flatnonzero(keep)
    if max_examples is not None and len(idx) > max_examples:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(max_examples), replace=False))
    prod_sorted = tx[PRODUCT].to_numpy(np.int64)[order]
    hh_sorted = tx[HOUSEHOLD].to_numpy(np.int64)[order]
    rows = {c: [] for c in EXAMPLE_COLUMNS}
    for i in idx:
        lo, ri = first[i], int(r[i])
        lines = prod_sorted[lo:lo + n_lines[i]]
        shown = np.unique(lines[:ri])
        targets = np.unique(lines[ri:])
        targets = targets[~np.isin(targets, shown)]
        if len(targets) == 0:
            continue
        rows["household_id"].append(int(hh_sorted[lo]))
        rows["basket_id"].append(int(b_sorted[lo]))
        rows["anchor_time"].append(int(t_sorted[lo + ri]))
        rows["basket_time"].append(int(basket_time[i]))
        rows["n_lines"].append(int(n_lines[i]))
        rows["revealed"].append(ri)
        rows["revealed_products"].append(shown)
        rows["targets"].append(targets)
    out = pd.DataFrame({c: pd.Series(v, dtype=object if c in ("revealed_products", "targets") else np.int64)
                        for c, v in rows.items()})
    return out.sort_values(["anchor_time", "basket_id"], kind="stable").reset_index(drop=True)


class PurchaseIndex:
    """The lines of ``tx`` indexed for "strictly before t" queries: catalog popularity over a
    look-back window and a household's purchase counts. Built once, queried per anchor."""

    def __init__(self, tx: pd.DataFrame):
        _check_columns(tx, (TIME, HOUSEHOLD, PRODUCT))
        t = tx[TIME].to_numpy(np.int64)
        by_time = np.argsort(t, kind="stable")
        self.time = t[by_time]
        self.product = tx[PRODUCT].to_numpy(np.int64)[by_time]
        hh = tx[HOUSEHOLD].to_numpy(np.int64)
        by_hh = np.lexsort((t, hh))
        self.hh_sorted, self.hh_time, self.hh_product = hh[by_hh], t[by_hh], tx[PRODUCT].to_numpy(np.int64)[by_hh]

    def popular(self, t: int, n: int, days: float = 28) -> tuple[np.ndarray, np.ndarray]:
        """``(product ids, line counts)`` of the ``n`` most bought products in ``[t - days, t)``;
        ties broken by product id (ascending)."""
        lo, hi = np.searchsorted(self.time, [int(t) - int(days * NS_PER_DAY), int(t)], side="left")
        ids, counts = np.unique(self.product[lo:hi], return_counts=True)
        top = np.lexsort((ids, -counts))[:n]
        return ids[top], counts[top]

    def household_counts(self, household_id: int, t: int, window_ns: int | None = None,
                         max_lines: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(product ids, line counts)`` of the household's lines strictly before ``t``; with
        ``window_ns``/``max_lines`` only the newest ``max_lines`` of ``[t - window_ns, t)`` (what
        the plan's real-time window holds)."""
        lo = np.searchsorted(self.hh_sorted, household_id, side="left")
        hi = np.searchsorted(self.hh_sorted, household_id, side="right")
        end = lo + np.searchsorted(self.hh_time[lo:hi], int(t), side="left")
        if window_ns is not None:
            lo = lo + np.searchsorted(self.hh_time[lo:end], int(t) - int(window_ns), side="left")
        if max_lines is not None:
            lo = max(lo, end - int(max_lines))
        return np.unique(self.hh_product[lo:end], return_counts=True)


def popular_products(tx: pd.DataFrame | PurchaseIndex, t: int, n: int, days: float = 28) -> np.ndarray:
    """The ``n`` most bought products (purchase lines) in ``[t - days, t)``: strictly before
    ``t``; ties by product id. Pass a :class:`PurchaseIndex` when calling for many anchors."""
    if n < 1:
        raise RecsysTaskError(f"n: must be >= 1, got {n}")
    index = tx if isinstance(tx, PurchaseIndex) else PurchaseIndex(tx)
    return index.popular(t, n, days)[0]


# ----- baselines (scores [n_candidates], higher is better) ------------------------------------

def popularity_scores(candidate_counts: np.ndarray) -> np.ndarray:
    """Popularity baseline: the candidates' purchase lines in the look-back window."""
    return np.asarray(candidate_counts, np.float64)


def buy_again_scores(index: PurchaseIndex, household_id: int, anchor_time: int, candidates: np.ndarray,
                     candidate_counts: np.ndarray, window_ns: int | None = None,
                     max_lines: int | None = None) -> np.ndarray:
    """"Buy it again": how often the household bought each candidate strictly before the anchor
    (earlier baskets and the revealed lines of the open one; optionally only the plan's window,
    see :meth:`PurchaseIndex.household_counts`), popularity as the tie-break (a fraction < 1, so
    it never outweighs one purchase)."""
    ids, counts = index.household_counts(household_id, anchor_time, window_ns, max_lines)
    candidates = np.asarray(candidates, np.int64)
    own = np.zeros(len(candidates), np.float64)
    if len(ids):
        pos = np.minimum(np.searchsorted(ids, candidates), len(ids) - 1)
        hit = ids[pos] == candidates
        own[hit] = counts[pos[hit]]
    pop = np.asarray(candidate_counts, np.float64)
    return own + pop / (pop.max() + 1.0 if len(pop) else 1.0)
