"""In-memory window store: same rows, same order, same caps as Redis (offline replay, backfill)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

from schemas.interactions import Window
from schemas.plan import ServingPlan

from rti_store import logic
from rti_store.base import (AppendItem, BaseWindowStore, Completeness, StoreMarker, WindowKey, completeness_of,
                            parse_marker, pending_field, step_field)


class MemoryWindowStore(BaseWindowStore):
    """Windows as sorted lists of packed rows (see :mod:`rti_store.codec`), in one process.

    ``ttl_s=None`` (default) never expires; otherwise a window untouched by appends for ``ttl_s``
    seconds of ``clock()`` is dropped lazily, on its next access or by :meth:`sweep`. Safe to
    share between threads (one lock; appends and reads are short).
    """

    def __init__(self, plan: ServingPlan, horizon_ns: int | None = None, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.time):
        super().__init__(plan, horizon_ns=horizon_ns, ttl_s=ttl_s)
        self.clock = clock
        self._rows: dict[tuple[str, Any], list[bytes]] = {}
        self._expires: dict[tuple[str, Any], float] = {}
        self._lock = threading.Lock()
        self._marker: dict[str, str] = {}

    # ----- expiry ---------------------------------------------------------------------------
    def _live(self, key: tuple[str, Any], now: float) -> list[bytes] | None:
        rows = self._rows.get(key)
        if rows is not None and self.ttl_s is not None and self._expires[key] <= now:
            del self._rows[key], self._expires[key]
            return None
        return rows

    def sweep(self) -> int:
        """Drop every expired window now; returns how many were dropped."""
        if self.ttl_s is None:
            return 0
        with self._lock:
            now = self.clock()
            dead = [k for k, t in self._expires.items() if t <= now]
            for k in dead:
                del self._rows[k], self._expires[k]
            return len(dead)

    # ----- the interface --------------------------------------------------------------------
    def append(self, items: Sequence[AppendItem]) -> int:
        grouped: dict[tuple[str, Any], list[bytes]] = defaultdict(list)
        for hop_key, entity_id, interaction in items:  # encode everything first: all or nothing
            codec = self.codec(hop_key)
            grouped[(hop_key, self.entity(hop_key, entity_id))].append(codec.encode(interaction))
        with self._lock:
            return self._insert_grouped(grouped)

    def _insert_grouped(self, grouped: dict[tuple[str, Any], list[bytes]]) -> int:
        now = self.clock()
        added = 0
        for key, members in grouped.items():
            rows = self._live(key, now)
            if rows is None:
                rows = self._rows[key] = []
            max_len = self.codecs[key[0]].hop.max_len
            horizon = self.horizons[key[0]]
            added += logic.insert(rows, logic.prune_batch(members, max_len, horizon), max_len, horizon)
            if self.ttl_s is not None:
                self._expires[key] = now + self.ttl_of(key[0])
            if not rows:  # everything was older than the horizon
                del self._rows[key]
                self._expires.pop(key, None)
        return added

    def read_many(self, keys: Sequence[WindowKey], as_of: int | Sequence[int]) -> list[Window]:
        anchors = self.as_of_list(keys, as_of)
        wanted = [(self.codec(h).hop.max_len, (h, self.entity(h, e))) for h, e in keys]
        selected: list[list[bytes]] = []
        with self._lock:
            now = self.clock()
            for (max_len, key), t in zip(wanted, anchors):
                rows = self._live(key, now)
                lo, hi = self.plan.window_bounds(key[0], t)
                selected.append(logic.select(rows, lo, hi, max_len) if rows else [])
        return _decode_grouped(self, keys, selected)

    def rows(self, hop_key: str, entity_id: Any) -> list[bytes]:
        """All stored packed rows of one window, oldest first (no time bounds)."""
        key = (hop_key, self.entity(hop_key, entity_id))
        with self._lock:
            return list(self._live(key, self.clock()) or ())

    def dump_many(self, keys: Sequence[WindowKey]) -> list[Window]:
        """Full stored windows (no time bounds): the state that redelivery tests compare."""
        return _decode_grouped(self, keys, [self.rows(h, e) for h, e in keys])

    def keys(self) -> Iterable[WindowKey]:
        with self._lock:
            now = self.clock()
            return [k for k in list(self._rows) if self._live(k, now) is not None]

    # ----- completeness marker ---------------------------------------------------------------
    def read_many_checked(self, keys: Sequence[WindowKey],
                          as_of: int | Sequence[int]) -> tuple[list[Window], Completeness]:
        windows = self.read_many(keys, as_of)
        with self._lock:
            return windows, completeness_of(len(self._marker))

    def marker(self) -> StoreMarker:
        with self._lock:
            return parse_marker(dict(self._marker))

    def claim_rebuild(self, partitions: Sequence[tuple[str, int]], from_ms: int, epoch: str,
                      steps: Sequence[str] = ()) -> StoreMarker:
        with self._lock:
            if not self._marker:
                self._marker = {"epoch": epoch, **{pending_field(t, p): str(int(from_ms)) for t, p in partitions},
                                **{step_field(s): "1" for s in steps}}
            return parse_marker(dict(self._marker))

    def finish_rebuild(self, topic: str, partition: int, epoch: str) -> bool:
        return self._finish(pending_field(topic, partition), epoch)

    def finish_step(self, name: str, epoch: str) -> bool:
        return self._finish(step_field(name), epoch)

    def _finish(self, name: str, epoch: str) -> bool:
        with self._lock:
            if self._marker.get("epoch") != epoch:
                return False
            return self._marker.pop(name, None) is not None

    def mark_complete(self, epoch: str) -> None:
        with self._lock:
            self._marker = {"epoch": epoch}

    def forget_everything(self) -> None:
        """Drop every window and the marker (what a Redis restart without persistence does)."""
        with self._lock:
            self._rows.clear()
            self._expires.clear()
            self._marker = {}

    def close(self) -> None:
        pass


def _decode_grouped(store: BaseWindowStore, keys: Sequence[WindowKey], rows: list[list[bytes]]) -> list[Window]:
    """Decode per hop in one numpy pass, then put the windows back in key order."""
    by_hop: dict[str, list[int]] = defaultdict(list)
    for i, (hop_key, _) in enumerate(keys):
        by_hop[hop_key].append(i)
    out: list[Window | None] = [None] * len(keys)
    for hop_key, idx in by_hop.items():
        members = [m for i in idx for m in rows[i]]
        windows = store.codec(hop_key).windows(members, [len(rows[i]) for i in idx])
        for i, w in zip(idx, windows):
            out[i] = w
    return out  # type: ignore[return-value]


__all__ = ["MemoryWindowStore"]
