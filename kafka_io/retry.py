"""Retry with capped exponential backoff -- for the store and the DLQ, never for bad records.

A failing store (Redis down, slow, failing over) must neither drop a batch nor commit past it:
the batch is retried until it succeeds, or until the caller gives up on shutdown, in which case
nothing is committed and Kafka redelivers the batch to the next owner of the partition.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.05
    max_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +- fraction, so several consumers do not retry in lockstep

    def delays(self, rng: random.Random | None = None):
        rng = rng or random.Random()
        delay = self.initial_s
        while True:
            yield max(0.0, delay * (1 + rng.uniform(-self.jitter, self.jitter)))
            delay = min(self.max_s, delay * self.multiplier)


class GaveUp(RuntimeError):
    """Retrying stopped because the caller asked to (shutdown), not because it succeeded."""


def retry_until(fn: Callable[[], T], *, what: str, backoff: Backoff = Backoff(),
                give_up: Callable[[], bool] = lambda: False,
                on_retry: Callable[[BaseException, int, float], None] | None = None,
                sleep: Callable[[float], None] = time.sleep,
                retry_on: tuple[type[BaseException], ...] = (Exception,)) -> T:
    """Call ``fn`` until it returns; after each failure wait the next backoff delay.

    ``give_up()`` is checked after every failure; when true, :class:`GaveUp` is raised (chained
    to the last error).
    """
    attempt = 0
    for delay in backoff.delays():
        try:
            return fn()
        except retry_on as exc:
            attempt += 1
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            if attempt == 1 or attempt % 20 == 0:
                log.warning("%s failed (attempt %d), retrying in %.2fs: %s", what, attempt, delay, exc)
            if give_up():
                raise GaveUp(f"{what}: gave up after {attempt} failed attempt(s): {exc}") from exc
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
