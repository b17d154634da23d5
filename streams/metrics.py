"""Prometheus metrics of the ingest service (own registry, so several services can coexist).

    relstream_ingest_records_total{topic}          records consumed (good + dead-lettered)
    relstream_ingest_interactions_total            window appends acknowledged by the store
    relstream_ingest_batch_seconds                 histogram: consume-to-commit time of a batch
    relstream_ingest_consumer_lag{topic,partition} high watermark - position (records behind)
    relstream_ingest_dlq_total{topic,reason}       dead letters delivered (reasons: schemas.dead_letter)
    relstream_ingest_dlq_skipped_total{topic,reason}  bad records left to the scorer (ingest.dead_letters)
    relstream_ingest_window_freshness_seconds      now - newest event time ingested
    relstream_ingest_store_retries_total           failed store/DLQ attempts that were retried
    relstream_ingest_commit_failures_total         offset commits that failed (batch is redelivered)
    relstream_ingest_window_store_state{relstream_ingest_window_store_state}
                                                   1 for the store's completeness: complete|rebuilding|lost
    relstream_ingest_rebuild_remaining_records{topic,partition}  records left to replay after a loss

Events/s is ``rate(relstream_ingest_records_total[1m])``. The clock is injected so freshness is
testable; it is computed when scraped, so it keeps growing while nothing new arrives.
"""
from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None,
                 now_ns: Callable[[], int] = time.time_ns):
        self.registry = registry or CollectorRegistry()
        self._now_ns = now_ns
        self.newest_event_time_ns: int | None = None
        r = self.registry
        self.records = Counter("relstream_ingest_records", "Records consumed (good and dead-lettered)",
                               ["topic"], registry=r)
        self.interactions = Counter("relstream_ingest_interactions", "Window appends acknowledged by the store",
                                    registry=r)
        self.batch_seconds = Histogram("relstream_ingest_batch_seconds", "Consume-to-commit time of one batch",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.lag = Gauge("relstream_ingest_consumer_lag", "Records behind the high watermark",
                         ["topic", "partition"], registry=r)
        self.dlq = Counter("relstream_ingest_dlq", "Dead letters delivered", ["topic", "reason"], registry=r)
        self.dlq_skipped = Counter("relstream_ingest_dlq_skipped",
                                   "Bad records not dead-lettered by ingest: the scorer owns their topic's dead letters",
                                   ["topic", "reason"], registry=r)
        self.freshness = Gauge("relstream_ingest_window_freshness_seconds",
                               "Now minus the newest event time ingested (NaN before the first)", registry=r)
        self.freshness.set_function(self.freshness_seconds)
        self.retries = Counter("relstream_ingest_store_retries", "Store or DLQ attempts that failed and were retried",
                               registry=r)
        self.commit_failures = Counter("relstream_ingest_commit_failures",
                                       "Offset commits that failed (the batch is redelivered)", registry=r)
        self.store_state = Enum("relstream_ingest_window_store_state",
                                "Completeness of the window store (lost: no marker; rebuilding: replay from Kafka)",
                                states=["complete", "rebuilding", "lost"], registry=r)
        self.rebuild_remaining = Gauge("relstream_ingest_rebuild_remaining_records",
                                       "Records left to replay into the window store after a loss",
                                       ["topic", "partition"], registry=r)

    def set_store_completeness(self, state: str) -> None:
        self.store_state.state(state)

    def set_rebuild_remaining(self, topic: str, partition: int, records: int) -> None:
        self.rebuild_remaining.labels(topic, str(partition)).set(records)

    def note_event_time(self, event_time_ns: int | None) -> None:
        if event_time_ns is not None and (self.newest_event_time_ns is None
                                          or event_time_ns > self.newest_event_time_ns):
            self.newest_event_time_ns = event_time_ns

    def freshness_seconds(self) -> float:
        if self.newest_event_time_ns is None:
            return float("nan")
        return (self._now_ns() - self.newest_event_time_ns) / 1e9

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic, str(partition)).set(lag)

    def drop_lag(self, topic: str, partition: int) -> None:
        try:
            self.lag.remove(topic, str(partition))
        except KeyError:
            pass

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Start the /metrics HTTP endpoint; returns (server, thread) (``server.shutdown()`` stops it)."""
        from prometheus_client import start_http_server
        return start_http_server(port, addr=addr, registry=self.registry)
