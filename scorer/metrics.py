"""Prometheus metrics of the scorer (both paths; the ``path`` label is ``http`` or ``kafka``).

Each service owns a :class:`ScorerMetrics` with its own registry, so several apps in one process
(tests) never collide, and ``/metrics`` shows exactly one service.
"""
from __future__ import annotations

import time
from collections import Counter as _Tally
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for /metrics)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES = ("window_read", "tensor_build", "triton", "total")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (0.99, 1.0)


class ScorerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "relstream_scorer_stage_seconds", "Latency of one scoring stage per batch (total: per request)",
            ["path", "stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "relstream_scorer_batch_size", "Events per Triton call", ["path"], buckets=_BATCH_BUCKETS,
            registry=r)
        self.scored = Counter("relstream_scorer_scored", "Events scored", ["path"], registry=r)
        self.errors = Counter("relstream_scorer_errors", "Errors by kind", ["path", "kind"], registry=r)
        self.degraded = Counter("relstream_scorer_degraded", "Scores served with a fallback input",
                                ["path", "reason"], registry=r)
        # per model version: canary vs primary score distributions (relstream model status, Grafana)
        self.score = Histogram("relstream_scorer_score", "Scores served, by model version",
                               ["path", "model_version"], buckets=_SCORE_BUCKETS, registry=r)
        self.cold_start = Counter("relstream_scorer_cold_start", "Entities scored without an embedding",
                                  ["path", "entity"], registry=r)
        self.triton_calls = Counter("relstream_scorer_triton_calls", "Triton inference calls", ["path"],
                                    registry=r)
        self.window_reads = Counter("relstream_scorer_window_reads", "Window-store round trips", ["path"],
                                    registry=r)
        self.model_version = Gauge("relstream_scorer_model_version_info",
                                   "1 for the model name/version answering the latest call",
                                   ["model_name", "model_version"], registry=r)
        # counted when the transaction holding them commits; reasons: schemas.dead_letter.REASONS
        self.dlq = Counter("relstream_scorer_dead_letters", "Dead letters committed to the dead-letter topic",
                           ["topic", "reason"], registry=r)
        self.retries = Counter("relstream_scorer_retries", "Batches retried (Triton unavailable, abort)",
                               ["path", "kind"], registry=r)
        self._version: tuple[str, str] | None = None
        self._children: dict = {}

    @contextmanager
    def stage(self, path: str, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(path, stage).observe(time.perf_counter() - t0)

    def observe_model(self, name: str, version: str) -> None:
        if self._version != (name, version):
            if self._version is not None:
                self.model_version.remove(*self._version)
            self.model_version.labels(name, version).set(1)
            self._version = (name, version)

    def observe_records(self, path: str, records) -> None:
        """Count a batch of score records (one label lookup per distinct label, not per record)."""
        if not records:
            return
        self.scored.labels(path).inc(len(records))
        degraded, cold, by_version = _Tally(), _Tally(), {}
        for rec in records:
            degraded.update(rec["degraded"])
            cold.update(rec["cold_start"])
            by_version.setdefault(rec["model_version"], []).append(rec["score"])
        for version, scores in by_version.items():
            hist = self.score.labels(path, version)
            for value in scores:
                hist.observe(value)
        for reason, n in degraded.items():
            self.degraded.labels(path, reason).inc(n)
        for entity, n in cold.items():
            self.cold_start.labels(path, entity).inc(n)

    def child(self, metric, *labels):
        """``metric.labels(*labels)``, memoised: label lookups are a visible cost per request."""
        key = (metric._name, labels)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = metric.labels(*labels)
        return got

    def observe_record(self, path: str, record: dict) -> None:
        self.child(self.scored, path).inc()
        self.child(self.score, path, record["model_version"]).observe(record["score"])
        for reason in record["degraded"]:
            self.child(self.degraded, path, reason).inc()
        for entity in record["cold_start"]:
            self.child(self.cold_start, path, entity).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent); for tests and benchmark reports."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else float(got)
