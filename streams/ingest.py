"""`relstream ingest`: the Kafka -> Redis-windows service, assembled from its parts.

Settings come from the config file's ``ingest`` section (validated by :class:`IngestSection`),
with command-line flags on top. Kafka client settings are the shared ``kafka.client`` passthrough
(SASL/TLS/...) plus ``ingest.consumer`` / ``ingest.producer`` for this service only; the
settings the delivery contract depends on (manual commits, acks=all) are forced.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kafka_io.retry import Backoff
from schemas.dead_letter import DEFAULT_MAX_PAYLOAD_BYTES
from schemas.plan import ServingPlan
from streams.backfill import backfill, row_decoder
from streams.columnar import ColumnarDecoder
from streams.consumer import IngestLoop, LoopSettings, LoopStats
from streams.dlq import DeadLetterSink
from streams.metrics import IngestMetrics
from streams.rebuild import StateRebuild
from streams.records import RecordDecoder
from streams.settings import BackfillSource, IngestSection  # noqa: F401 - the section's model, also reached from here

log = logging.getLogger(__name__)

# librdkafka settings the exactly-once effect relies on; user values may not override them.
FORCED_CONSUMER = {"enable.auto.commit": False, "enable.auto.offset.store": False}
FORCED_PRODUCER = {"acks": "all", "enable.idempotence": True}
DEFAULT_CONSUMER = {"auto.offset.reset": "earliest", "enable.partition.eof": False,
                    "fetch.wait.max.ms": 50, "queued.min.messages": 100000}
DEFAULT_PRODUCER = {"linger.ms": 5}


@dataclass(frozen=True)
class IngestSettings:
    """Everything the service needs, resolved (pure metadata)."""

    topics: Mapping[str, str]
    dlq_topic: str
    group_id: str = "relstream-ingest"
    batch_size: int = 5000
    batch_timeout_s: float = 0.1
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    # topics whose bad records the scorer dead-letters (see IngestSection.dead_letters)
    skip_dead_letters_on: frozenset[str] = frozenset()
    shutdown_grace_s: float = 30.0
    state_check_interval_s: float = 1.0
    backfill_sources: tuple[tuple[str, str | None], ...] = ()  # (path, table or None = fact table)
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    backoff: Backoff = Backoff()

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(batch_size=self.batch_size, batch_timeout_s=self.batch_timeout_s,
                            shutdown_grace_s=self.shutdown_grace_s, backoff=self.backoff)


def default_topics(plan: ServingPlan, topics: list[str], labels_topic: str | None = None) -> dict[str, str]:
    """Map the configured interaction topics onto the plan's one interaction table, and the label
    topic onto the label table of a plan with label feedback."""
    tables = sorted({h.key.target.table for h in plan.hops})
    if len(tables) != 1:
        raise ValueError(f"ingest.topics: plan {plan.name!r} has interaction tables {tables}; "
                         "map each topic explicitly (ingest.topics: {topic: table} or --topic TOPIC=TABLE)")
    out = {t: tables[0] for t in topics}
    if plan.label_feedback is not None and labels_topic:
        out[labels_topic] = plan.label_feedback.table
    return out


def scorer_owned_topics(topics: Iterable[str], dead_letters: str, scorer_topics: Iterable[str],
                        max_payload_bytes: int, scorer_max_payload_bytes: int) -> frozenset[str]:
    """The consumed topics whose bad records `relstream score` dead-letters, not ingest.

    With ``dead_letters: owned`` these are the topics both services consume. Both must then judge a
    record by the same size limit, or ingest would skip a record the scorer accepts (it would be
    neither in the windows nor in the dead-letter topic): a different limit is a config error.
    """
    if dead_letters == "all":
        return frozenset()
    shared = frozenset(topics) & frozenset(scorer_topics)
    if shared and max_payload_bytes != scorer_max_payload_bytes:
        raise ValueError(f"ingest.max_payload_bytes ({max_payload_bytes}) differs from score.max_payload_bytes "
                         f"({scorer_max_payload_bytes}) on topic(s) {sorted(shared)} that both services consume "
                         f"and whose dead letters the scorer writes (ingest.dead_letters: owned): set them equal")
    return shared


def consumer_config(base: Mapping[str, Any], settings: IngestSettings,
                    extra: Mapping[str, Any] | None = None) -> dict:
    for key, forced in FORCED_CONSUMER.items():
        for src in (base, extra or {}):
            if key in src and str(src[key]).lower() != str(forced).lower():
                raise ValueError(f"kafka consumer setting {key}={src[key]!r} is not allowed: the service "
                                 f"commits offsets itself, after the window store acknowledged them")
    conf = {**DEFAULT_CONSUMER, **base, **(extra or {}), **FORCED_CONSUMER}
    conf["group.id"] = settings.group_id
    return conf


def producer_config(base: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    # consumer-only keys in the shared passthrough would make the producer complain
    shared = {k: v for k, v in base.items() if k not in ("session.timeout.ms", "heartbeat.interval.ms",
                                                         "group.id", "auto.offset.reset")}
    return {**DEFAULT_PRODUCER, **shared, **(extra or {}), **FORCED_PRODUCER}


class IngestService:
    """Consumer + decoder + store + DLQ + metrics. ``run()`` blocks until stopped."""

    def __init__(self, plan: ServingPlan, settings: IngestSettings, kafka_conf: Mapping[str, Any],
                 store: Any, codec: Any, decode_errors: tuple[type[BaseException], ...],
                 consumer_extra: Mapping[str, Any] | None = None,
                 producer_extra: Mapping[str, Any] | None = None,
                 now_ns: Callable[[], int] | None = None):
        from confluent_kafka import Consumer, Producer
        import time

        self.plan = plan
        self.settings = settings
        self.store = store
        now_ns = now_ns or time.time_ns
        self.metrics = IngestMetrics(now_ns=now_ns)
        self.decoder = RecordDecoder(plan, settings.topics, codec.decode, decode_errors,
                                     max_payload_bytes=settings.max_payload_bytes,
                                     skip_dead_letters_on=settings.skip_dead_letters_on,
                                     columnar=columnar_decoder(codec, settings.max_payload_bytes))
        conf = consumer_config(kafka_conf, settings, consumer_extra)
        conf["on_commit"] = lambda err, partitions: self.loop.on_commit(err, partitions)
        self.consumer = Consumer(conf, logger=log)
        self.producer = Producer(producer_config(kafka_conf, producer_extra), logger=log)
        self.dlq = DeadLetterSink(self.producer, settings.dlq_topic, codec.encode, settings.group_id, now_ns=now_ns)
        # a store that lost its data is rebuilt from Kafka, as far back as the plan looks, plus
        # the backfilled history
        for i, (path, _table) in enumerate(settings.backfill_sources):
            if not Path(path).is_file():
                raise ValueError(f"ingest.backfill_sources[{i}].path: no such file {path!r}")
        rebuild = StateRebuild(self.consumer, store, settings.topics, plan.lookback_ns,
                               metrics=self.metrics, check_interval_s=settings.state_check_interval_s,
                               backfill=self._reload_backfill if settings.backfill_sources else None)
        self.loop = IngestLoop(self.consumer, store, self.decoder, self.dlq, self.metrics,
                               settings.loop_settings(), rebuild=rebuild)
        self._metrics_server = None

    def _reload_backfill(self) -> None:
        decoder = row_decoder(self.plan)
        for path, table in self.settings.backfill_sources:
            report = backfill(path, decoder, self.store, table=table, progress=False)
            log.warning("rebuild: reloaded %s (%d rows, %d window rows in %.1f s)", report.path, report.rows,
                        report.interactions, report.seconds)

    def start_metrics(self) -> int | None:
        if self.settings.metrics_port is None:
            return None
        # RELSTREAM_METRICS_HOST=0.0.0.0 in containers, so Prometheus can scrape the pod; it
        # overrides ingest.metrics_addr / --metrics-addr
        server, _thread = self.metrics.serve(self.settings.metrics_port,
                                             addr=os.environ.get("RELSTREAM_METRICS_HOST") or self.settings.metrics_addr)
        self._metrics_server = server
        return server.server_address[1]

    def run(self, idle_exit_s: float | None = None, install_signals: bool = True) -> LoopStats:
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.loop.request_stop())
        self.loop.subscribe(self.settings.topics)
        try:
            return self.loop.run(idle_exit_s=idle_exit_s)
        finally:
            self.close()

    def stop(self) -> None:
        self.loop.request_stop()

    def close(self) -> None:
        try:
            self.loop.close()
        finally:
            self.producer.flush(10)
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server = None


def columnar_decoder(codec: Any, max_payload_bytes: int) -> ColumnarDecoder | None:
    """Batch decoding of flat numeric records for the codec's registry (None: a codec without one)."""
    registry = getattr(codec, "registry", None)
    if registry is None or not hasattr(registry, "schema"):
        return None
    return ColumnarDecoder(registry, min(max_payload_bytes, getattr(codec, "max_bytes", max_payload_bytes)))


def open_codec(registry_path: str | Path, max_payload_bytes: int):
    """The Avro codec over the file registry, with the built-in schemas registered."""
    from schemas.registry import AvroCodec, DecodeError, FileSchemaRegistry, load_builtin_schemas

    registry = FileSchemaRegistry(registry_path)
    load_builtin_schemas(registry)
    return AvroCodec(registry, max_bytes=max_payload_bytes), (DecodeError,)


def open_redis_store(plan: ServingPlan, client: Any, options: Mapping[str, Any] | None = None):
    from rti_store import RedisWindowStore

    return RedisWindowStore(plan, client, **dict(options or {}))
