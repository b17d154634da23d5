"""Fallbacks (seed 002): a slow or dead window store must not take scoring down with it.

* Window store down, erroring or past the deadline -> every window of the batch is empty and
  each score carries ``degraded: ["windows_unavailable"]`` (and the metric).
* Window store answering but not complete (its marker is missing: it lost its data; or ingest
  is replaying from Kafka) -> the windows read are used, and each score carries
  ``degraded: ["windows_rebuilding"]`` (and the metric), so no score computed on partial state
  goes out unflagged. The marker is read after the windows in the same round trip. The model still
  gets the fact row and the embeddings, which is what it saw for entities without history.
* After a failure the store is skipped for ``cooldown_s`` (a tiny circuit breaker), so an
  outage costs one deadline, not one deadline per request.
* Missing embeddings are the model's business (its cold-start path); the scorer only reports
  the model's ``cold_start`` output.
* Triton down is not degraded but refused: :class:`scorer.triton.TritonUnavailable` -> 503 on
  HTTP, pause-and-retry on Kafka.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from schemas.interactions import Window, WindowKey
from schemas.plan import ServingPlan

from rti_store.base import Completeness

from .pipeline import DEGRADED_REBUILDING, DEGRADED_WINDOWS, empty_windows

log = logging.getLogger(__name__)


class WindowReader(Protocol):
    """What the scorer needs from a window store (``rti_store.RedisWindowStore`` and friends)."""

    def read_many_checked(self, keys: Sequence[WindowKey],
                          as_of: Sequence[int]) -> tuple[list[Window], Completeness]: ...


@dataclass(frozen=True)
class WindowRead:
    windows: list[Window]
    degraded: tuple[str, ...] = ()
    error: str | None = None


class WindowFallback:
    """Reads windows for a batch in one round trip, or falls back to empty windows."""

    def __init__(self, plan: ServingPlan, store: WindowReader | None, *, deadline_s: float = 0.02,
                 cooldown_s: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.plan = plan
        self.store = store
        self.deadline_s = deadline_s
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._skip_until = 0.0
        self.last_error: str | None = None

    def _fallback(self, keys: Sequence[WindowKey], error: str) -> WindowRead:
        return WindowRead(empty_windows(self.plan, keys), (DEGRADED_WINDOWS,), error)

    def _skipping(self) -> bool:
        return self.clock() < self._skip_until

    def _failed(self, error: str) -> None:
        self.last_error = error
        self._skip_until = self.clock() + self.cooldown_s

    def _checked(self, keys: Sequence[WindowKey], answer: tuple[Any, Completeness]) -> WindowRead:
        windows, completeness = list(answer[0]), answer[1]
        if len(windows) != len(keys):
            raise RuntimeError(f"window store returned {len(windows)} windows for {len(keys)} keys")
        return WindowRead(windows, () if completeness is Completeness.COMPLETE else (DEGRADED_REBUILDING,))

    def read(self, keys: Sequence[WindowKey], as_of: Sequence[int]) -> WindowRead:
        """Blocking read (Kafka path); the store client's socket timeout is the deadline."""
        if not keys:
            return WindowRead([])
        if self.store is None:
            return self._fallback(keys, "no window store configured")
        if self._skipping():
            return self._fallback(keys, f"window store skipped after: {self.last_error}")
        try:
            return self._checked(keys, self.store.read_many_checked(keys, as_of))
        except Exception as exc:  # noqa: BLE001 - any store failure degrades, never crashes
            error = f"{type(exc).__name__}: {exc}"
            self._failed(error)
            log.warning("window store failed, scoring with empty windows: %s", error)
            return self._fallback(keys, error)

    async def read_async(self, keys: Sequence[WindowKey], as_of: Sequence[int],
                         executor: Executor | None = None) -> WindowRead:
        """Non-blocking read (HTTP path): the blocking client runs in ``executor``; past
        ``deadline_s`` the answer goes out with empty windows while the thread finishes."""
        if not keys:
            return WindowRead([])
        if self.store is None:
            return self._fallback(keys, "no window store configured")
        if self._skipping():
            return self._fallback(keys, f"window store skipped after: {self.last_error}")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(executor, self.store.read_many_checked, keys, as_of)
        try:
            return self._checked(keys, await asyncio.wait_for(fut, self.deadline_s))
        except asyncio.TimeoutError:
            error = f"window store slower than the {self.deadline_s * 1000:.0f} ms deadline"
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
        self._failed(error)
        log.warning("window store failed, scoring with empty windows: %s", error)
        return self._fallback(keys, error)
