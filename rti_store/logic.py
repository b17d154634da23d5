"""Window semantics on a sorted list of packed members: the reference both stores implement.

The in-memory store runs these functions directly; the Redis store runs the same steps inside a
Lua script (``redis_scripts.APPEND_LUA``) on a sorted set whose lexicographic order is the list's
order. Keeping one reference makes "identical results" checkable.

Why the final state depends only on the SET of events (never on delivery order):

* identity = (event time, event id) -> a redelivery finds its identity and is a no-op;
* count cap keeps the ``max_len`` largest rows: top-k of a union = top-k of (top-k of A) + B;
* age cap drops rows older than ``newest - horizon``; ``newest`` only grows, so a row dropped
  earlier would be dropped now too, and a late row older than the cutoff is dropped on arrival.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

import numpy as np

from rti_store.codec import ID_LEN, INT64_MIN, time_key, time_of


def prune_batch(new: list[bytes], max_len: int, horizon_ns: int | None) -> list[bytes]:
    """The rows of one window's batch that can still matter, sorted (oldest first).

    A row outside the batch's own newest ``max_len``, or older than the batch's newest row minus
    the horizon, can never be in the window (the window only keeps rows at least that new), so
    dropping it before the store sees it changes neither the state nor the newly-stored count.
    Among rows with the same (time, id) the first delivered one is kept, like the store does.
    Hot keys in a backfill batch thus cost the store at most ``max_len`` rows.
    """
    if len(new) < 2:
        return new
    first: dict[bytes, bytes] = {}
    for m in new:
        first.setdefault(m[:ID_LEN], m)
    rows = sorted(first.values())[-max_len:]
    if horizon_ns is not None:
        cutoff = time_of(rows[-1]) - horizon_ns
        if cutoff > INT64_MIN:
            rows = rows[bisect_left(rows, time_key(cutoff)):]
    return rows


def prune_grouped(entity: np.ndarray, event_time: np.ndarray, event_id: np.ndarray, max_len: int,
                  horizon_ns: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`prune_batch` of many windows at once, on the rows' (entity, time, id) columns.

    Returns ``(keep, start, window)``: ``keep`` = indices of the rows to store, grouped by window and
    sorted (oldest first) within it, the first delivered of each (time, id); window ``w`` is
    ``keep[start[w]:start[w + 1]]`` and ``window[w]`` the index of one of its rows.
    """
    n = len(entity)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    if entity.dtype == object:  # e.g. bytes ids: sort their ranks instead
        entity = np.unique(entity, return_inverse=True)[1].reshape(-1)
    order = np.lexsort((event_id, event_time, entity))  # stable: equal rows stay in delivery order
    g, t, i = entity[order], event_time[order], event_id[order]
    first = np.ones(n, bool)
    first[1:] = (g[1:] != g[:-1]) | (t[1:] != t[:-1]) | (i[1:] != i[:-1])
    order, g, t = order[first], g[first], t[first]
    # rank from the newest end of each window: keep the newest max_len
    ends = np.flatnonzero(np.r_[g[1:] != g[:-1], True])
    starts = np.r_[0, ends[:-1] + 1]
    size = ends - starts + 1
    rank = np.arange(len(g)) - np.repeat(starts, size)
    keep = rank >= np.repeat(size - max_len, size)
    if horizon_ns is not None:
        # newest - horizon, where it is above INT64_MIN (below it nothing is cut, as in prune_batch)
        newest = np.repeat(t[ends], size)
        cuts = newest > INT64_MIN + horizon_ns
        cutoff = np.where(cuts, newest - np.where(cuts, horizon_ns, 0), INT64_MIN)
        keep &= ~cuts | (t >= cutoff)
    order, g = order[keep], g[keep]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    return order, bounds, order[bounds[:-1]]


def insert(members: list[bytes], new: Iterable[bytes], max_len: int, horizon_ns: int | None) -> int:
    """Insert packed rows in place, then trim by count and age.

    Returns how many rows were newly stored: their (time, id) was not stored before and they are
    still in the window after the caps (so a redelivery always returns 0).
    """
    inserted = []
    for m in new:
        ident = m[:ID_LEN]
        i = bisect_left(members, ident)
        if i < len(members) and members[i][:ID_LEN] == ident:
            continue  # same (event time, event id): redelivery
        members.insert(i, m)
        inserted.append(m)
    trim(members, max_len, horizon_ns)
    if not members:
        return 0
    oldest = members[0]
    return sum(1 for m in inserted if m >= oldest)


def trim(members: list[bytes], max_len: int, horizon_ns: int | None) -> None:
    extra = len(members) - max_len
    if extra > 0:
        del members[:extra]
    if horizon_ns is not None and members:
        cutoff = time_of(members[-1]) - horizon_ns
        if cutoff > INT64_MIN:
            j = bisect_left(members, time_key(cutoff))
            if j:
                del members[:j]


def select(members: list[bytes], lo: int, hi: int, max_len: int) -> list[bytes]:
    """The newest ``max_len`` rows with ``lo <= event_time < hi``, oldest first."""
    if hi <= lo:
        return []
    j = bisect_left(members, time_key(hi))
    i = bisect_left(members, time_key(lo), 0, j)
    return members[max(i, j - max_len):j]
