"""`relstream score`: facts from Kafka in, scores to Kafka out, exactly once.

One loop iteration handles one batch of consumed facts:

1. decode (Avro, Confluent wire format) and validate each record against the plan; anything that
   does not fit becomes a dead letter, never a crash. The verdict and the entry format are those of
   ``schemas.dead_letter``, shared with `relstream ingest` (same reasons, same truncation; the
   entry says ``source_service: score`` and the consumer group);
2. optionally append the facts to their own windows first (idempotent by event id; an event
   never sees itself because windows are read as of its time, half-open);
3. read every window of the batch in ONE store round trip, each as of its event's time
   (store down or slow -> empty windows + ``degraded``, see :mod:`scorer.fallbacks`);
4. build the tensors with ``schemas.tensors.build_tensors`` and stack them: ONE Triton call per
   batch (chunks of the model's ``max_batch_size``). Triton unavailable -> pause the partitions,
   keep the group membership alive, retry with backoff, resume: nothing is dropped;
5. in ONE Kafka transaction: the score records (keyed by entity), the dead letters and the
   consumed offsets (``send_offsets_to_transaction``). Consumers of the scores topic read with
   ``isolation.level=read_committed`` and see every fact's score exactly once, also across
   crashes (an aborted or fenced transaction leaves nothing visible and the offsets uncommitted).
   Dead letters are logged and counted when their transaction has committed, so an aborted and
   re-read batch is not counted twice.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

from confluent_kafka import KafkaError

from kafka_io.bounded import BoundedCalls, ClientsWedged, FatalConsumerError
from kafka_io.retry import Backoff
from schemas.dead_letter import (DEFAULT_MAX_PAYLOAD_BYTES, DLQ_SUBJECT, INVALID_ROW, MODEL_REJECTED, SCORE,
                                 DeadLetterEntry, RecordRejected, check_record, dead_letter_entry, log_dead_letter)
from schemas.plan import ServingPlan

from .batch import Outcome, run_sync, score_batch
from .fallbacks import WindowFallback
from .kafka_pacing import CommitCadence, Pacing, PausedPartitions, Watchdog
from .kafka_txn import AtLeastOnce, Transactions
from .metrics import ScorerMetrics
from .pipeline import PreparedEvent, interactions_to_append, prepare_event, score_record
from .tasks import ScoringTask
from .triton import ModelOutput, TritonRequestError, TritonUnavailable

log = logging.getLogger(__name__)
PATH = "kafka"
SCORES_SUBJECT = "scores-value"
APPEND_FAILED = "window_append_failed"
__all__ = ["BatchStats", "ClientsWedged", "FatalConsumerError", "KafkaScorer", "LoopStats", "ScoringStrategy",
           "run_rebuilding"]


@dataclass
class BatchStats:
    consumed: int = 0
    scored: int = 0
    dead_letters: int = 0
    triton_retries: int = 0
    aborted: bool = False
    # produced into the transaction; logged and counted once it has committed
    dead_letter_entries: list[DeadLetterEntry] = field(default_factory=list)


@dataclass
class _Pending:
    msg: Any
    event: PreparedEvent | None = None
    dead: tuple[str, str] | None = None  # (reason, error)
    received: float = 0.0


@dataclass
class LoopStats:
    batches: int = 0
    consumed: int = 0
    scored: int = 0
    dead_letters: int = 0
    aborts: int = 0
    triton_retries: int = 0
    extra: dict = field(default_factory=dict)


class ScoringStrategy:
    """Facts in, score records out (``schemas/avro/score.avsc``): a scoring plan's Kafka part."""

    subject = SCORES_SUBJECT

    def __init__(self, plan: ServingPlan):
        self.plan = plan
        self.task = ScoringTask(plan)

    def items(self, pending: Sequence[_Pending]) -> list[tuple[_Pending, PreparedEvent]]:
        return [(p, p.event) for p in pending if p.event is not None]

    def appends(self, items) -> list:
        return interactions_to_append(self.plan, [event for _, event in items])

    def record(self, scorer: Any, p: _Pending, outcome: Outcome, flags: tuple[str, ...], now: int) -> dict:
        out, i = outcome.output, outcome.row
        return score_record(self.plan, p.event, out.scores[i], out.cold_start[i], model_name=out.name_at(i),
                            model_version=out.version_at(i), latency_ms=(time.perf_counter() - p.received) * 1000,
                            degraded=flags + outcome.degraded, scored_at=now)

    def committed(self, scorer: Any, records) -> None:
        m = scorer.metrics
        m.observe_records(PATH, [rec for _, rec in records])
        total = m.stage_seconds.labels(PATH, "total")
        for _, rec in records:
            total.observe(rec["latency_ms"] / 1000)


DELIVERY = ("exactly_once", "at_least_once")


class KafkaScorer:
    """The consume-score-produce loop. Clients are injected (real ones in production and tests);
    time too (``clock``, ``sleep``): the loop's parts are :class:`scorer.kafka_pacing.Pacing`,
    :class:`~scorer.kafka_pacing.Watchdog`, :class:`~scorer.kafka_pacing.PausedPartitions` and
    :class:`scorer.kafka_txn.Transactions`; a batch is :func:`scorer.batch.score_batch`."""

    def __init__(self, plan: ServingPlan, *, consumer: Any, producer: Any, codec: Any, triton: Any,
                 fallback: WindowFallback, facts_topics: Sequence[str], scores_topic: str, dlq_topic: str,
                 store: Any = None, append_scored: bool = False, max_batch: int = 256,
                 poll_timeout_s: float = 0.005, key_column: str | None = None,
                 metrics: ScorerMetrics | None = None, backoff_s: float = 0.1, backoff_max_s: float = 2.0,
                 now_ns: Callable[[], int] = time.time_ns, txn_timeout_s: float = 30.0,
                 encoder: Any = None, strategy: Any = None, txn_call_timeout_s: float = 10.0,
                 init_timeout_s: float = 120.0, commit_interval_s: float = 0.0, watchdog_s: float = 30.0,
                 batch_interval_s: float = 0.0, group_id: str = "",
                 commit_interval_max_s: float | None = None, commit_busy_rate: float = 1000.0,
                 delivery: str = "exactly_once",
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.plan = plan
        # written into every dead letter (the consumer's group.id; the consumer does not expose it)
        self.group_id = group_id
        # larger records are dead-lettered as oversize (the same limit as ingest on a shared topic)
        self.max_payload_bytes = max_payload_bytes
        # The plan kind: its batch task, items and records (ScoringStrategy; ranking plans:
        # scorer.recommend_kafka.RankingStrategy); the loop, retries and transaction are these.
        self.strategy = strategy or ScoringStrategy(plan)
        self.consumer = consumer
        self.codec = codec
        # Score records are built by score_record() and always fit the schema: the hot path may
        # skip fastavro's record validation (5x cheaper); decoding is always strict.
        self.encoder = encoder or codec
        self.triton = triton
        self.fallback = fallback
        self.facts_topics = list(facts_topics)
        self.scores_topic = scores_topic
        self.dlq_topic = dlq_topic
        self.store = store
        self.append_scored = append_scored
        self.max_batch = max_batch
        self.key_column = key_column
        self.metrics = metrics or ScorerMetrics()
        # Triton unavailable: retried after these delays (no jitter: one scorer per partition set)
        self.triton_backoff = Backoff(initial_s=backoff_s, max_s=backoff_max_s, jitter=0.0)
        self.now_ns = now_ns
        self.clock, self.sleep = clock, sleep
        self.init_timeout_s = init_timeout_s
        # how long a transaction stays open: commit_interval_s, or (commit_interval_max_s set) rising
        # with the arrival rate up to it (scorer.kafka_pacing.CommitCadence)
        cadence = CommitCadence(commit_interval_s, max_interval_s=commit_interval_max_s, busy_rate=commit_busy_rate,
                                clock=clock)
        self.pacing = Pacing(max_batch=max_batch, batch_interval_s=batch_interval_s, poll_timeout_s=poll_timeout_s,
                             cadence=cadence, clock=clock)
        self.watchdog = Watchdog(watchdog_s, clock)
        # Pipelined transactions: batch k+1 is decoded, read and scored while batch k's transaction
        # commits on the worker thread; its records go into the next transaction as soon as that
        # commit is done. The cadence lets one transaction span several batches (fewer
        # transactions: less broker CPU, at most its interval more latency).
        # delivery "at_least_once" (opt-in): an idempotent producer, offsets committed after the
        # records are acknowledged (scorer.kafka_txn.AtLeastOnce)
        if delivery not in DELIVERY:
            raise ValueError(f"score.delivery: {delivery!r} is not one of {sorted(DELIVERY)}")
        common = dict(metrics=self.metrics, on_committed=self._committed, on_aborted=self._aborted,
                      on_abort=self._count_abort, cadence=cadence, txn_call_timeout_s=txn_call_timeout_s, clock=clock)
        if delivery == "exactly_once":
            self.txns = Transactions(producer, consumer, txn_timeout_s=txn_timeout_s, calls=BoundedCalls(clock=clock),
                                     sleep=sleep, **common)
        else:
            self.txns = AtLeastOnce(producer, consumer, **common)
        self.model_max_batch = max_batch
        self._stop = threading.Event()
        self._revoked = False
        self.stats = LoopStats()

    @property
    def producer(self) -> Any:
        return self.txns.producer

    @producer.setter
    def producer(self, producer: Any) -> None:
        self.txns.producer = producer

    # ----- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        t0 = self.clock()
        # Fences a previous incarnation with the same transactional.id and completes or aborts its
        # open transaction. Retriable failures (broker still down) are retried up to init_timeout_s.
        self.txns.init(self.init_timeout_s)
        log.info("transactions initialised in %.2fs", self.clock() - t0)
        self.consumer.subscribe(self.facts_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        try:
            self.model_max_batch = max(1, min(self.max_batch, self.triton.max_batch_size()))
        except Exception as exc:  # noqa: BLE001 - Triton may be down at start: learn it later
            log.warning("could not read the model's max_batch_size (%s); using %d", exc, self.max_batch)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer, partitions) -> None:
        self._revoked = True
        log.info("revoked %s", [(p.topic, p.partition) for p in partitions])
        # still this generation's member: commit what was produced for these partitions now, so
        # their next owner starts after it (a failure aborts it; the next owner re-reads it)
        self.flush_commits()

    def _on_lost(self, consumer, partitions) -> None:
        self._revoked = True  # the group moved on: a commit now would be rejected and aborted
        log.warning("lost %s", [(p.topic, p.partition) for p in partitions])

    def run(self, idle_exit_s: float | None = None, max_events: int | None = None) -> LoopStats:
        """Loop until stopped (SIGTERM/SIGINT in the CLI), idle for ``idle_exit_s``, or ``max_events``."""
        last_data = self.clock()
        while not self._stop.is_set():
            msgs = [m for m in self._next_batch() if self._usable(m)]
            if msgs:
                self.process(msgs)
                last_data = self.clock()  # after: a batch that waited out an outage
                self.watchdog.input_seen()
            else:
                self.watchdog.check(lambda: self.consumer.list_topics(self.facts_topics[0], timeout=5.0),
                                    lambda: bool(self.consumer.assignment()))
            self.txns.advance(idle=not msgs)
            if not msgs and self.txns.idle and idle_exit_s is not None and self.clock() - last_data > idle_exit_s:
                break
            if max_events is not None and self.stats.consumed >= max_events:
                break
        self.flush_commits()  # leave nothing uncommitted behind: a successor starts after it
        return self.stats

    def _next_batch(self) -> list:
        """The next batch, paced (:class:`scorer.kafka_pacing.Pacing`)."""
        return self.pacing.next_batch(self.consumer, self.txns.open_began())

    def flush_commits(self) -> None:
        """Commit everything produced so far and wait for it (stop, revocation)."""
        self.txns.flush()

    def close(self, timeout_s: float = 10.0) -> None:
        """Leave the group and stop, waiting at most ``timeout_s`` for the consumer's close (it talks
        to the group coordinator, which may be the thing that is stuck). The producer holds nothing
        to flush: every record it sends belongs to a transaction, committed or not."""
        # after a failure, what is open or committing is abandoned: the next producer with this
        # transactional.id fences it (normally run() has committed everything already)
        self.txns.abandon()
        closer = threading.Thread(target=_close_quietly, args=(self.consumer,), name="kafka-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        if closer.is_alive():
            log.warning("consumer close did not finish within %.0f s; abandoned", timeout_s)

    def _usable(self, msg) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() != KafkaError._PARTITION_EOF:
            self.metrics.errors.labels(PATH, "consumer").inc()
            log.warning("consumer error: %s", err)
            if err.fatal() or err.code() == KafkaError._FATAL:
                raise FatalConsumerError(f"fatal consumer error: {err}")
        return False

    # ----- one batch ---------------------------------------------------------------------------
    def decode(self, msgs) -> list[_Pending]:
        """Each message as an event to score, or marked dead with the shared verdict
        (``schemas.dead_letter.check_record``: the same reason ingest gives the same bytes)."""
        out = []
        now = time.perf_counter()
        to_event = partial(prepare_event, self.plan, key_column=self.key_column)
        for msg in msgs:
            p = _Pending(msg=msg, received=now)
            try:
                p.event = check_record(msg.value(), self.codec.decode, self.max_payload_bytes, to_event)
            except RecordRejected as rej:
                p.dead = (rej.reason, rej.detail)
            out.append(p)
        return out

    def process(self, msgs) -> BatchStats:
        """One consumed batch: decode, the plan kind's items (``self.strategy``), optional
        self-append, the one batch step (``scorer.batch``: one window read, chunked model calls
        with the poisoned-batch split), records + dead letters + offsets into the transaction."""
        self._revoked = False
        stats = BatchStats(consumed=len(msgs))
        pending = self.decode(msgs)
        items = self.strategy.items(pending)
        flags = self._append_scored(items)
        outcomes = run_sync(score_batch(self.strategy.task, [item for _, item in items], self.model_max_batch),
                            self._read_windows, partial(self._infer_retrying, stats=stats))
        if self._revoked:
            # Partitions moved while Triton was down: their new owner re-reads the uncommitted batch.
            log.warning("partitions revoked during the batch; dropping it (offsets not committed)")
            self.metrics.retries.labels(PATH, "revoked").inc()
            stats.aborted = True
            return stats
        now = self.now_ns()
        records = []
        for (p, _), outcome in zip(items, outcomes):
            if outcome.error is not None:
                refused = isinstance(outcome.error, TritonRequestError)
                p.dead = (MODEL_REJECTED if refused else INVALID_ROW, str(outcome.error))
                continue
            records.append((p, self.strategy.record(self, p, outcome, flags, now)))
        self._stage(pending, records, stats)
        self.stats.triton_retries += stats.triton_retries
        return stats

    def _append_scored(self, items) -> tuple[str, ...]:
        """``append_scored``: the batch's facts into their own windows first; the flag of a failure."""
        if not (items and self.append_scored and self.store is not None):
            return ()
        try:
            self.store.append(self.strategy.appends(items))
        except Exception as exc:  # noqa: BLE001 - scoring goes on; the flag says what is missing
            log.warning("self-append failed: %s", exc)
            self.metrics.errors.labels(PATH, "window_append").inc()
            return (APPEND_FAILED,)
        return ()

    def _read_windows(self, keys, as_of):
        with self.metrics.stage(PATH, "window_read"):
            read = self.fallback.read(keys, as_of)
        self.metrics.window_reads.labels(PATH).inc()
        return read

    # ----- Triton with pause-and-retry -----------------------------------------------------------
    def _infer_retrying(self, tensors, size: int, stats: BatchStats) -> ModelOutput:
        """One model call; Triton unavailable: pause the partitions, retry with backoff, resume
        (nothing is dropped). A refused call raises ``TritonRequestError`` to the batch step."""
        m = self.metrics
        paused = PausedPartitions(self.consumer, self._stop.is_set, self.clock)
        delays = self.triton_backoff.delays()
        try:
            while True:
                try:
                    with m.stage(PATH, "triton"):
                        m.triton_calls.labels(PATH).inc()
                        out = self.triton.infer(tensors)
                    m.observe_model(out.model_name, out.model_version)
                    m.batch_size.labels(PATH).observe(size)
                    return out
                except TritonRequestError:
                    if size == 1:
                        m.errors.labels(PATH, "triton_rejected").inc()
                    raise
                except TritonUnavailable as exc:
                    m.errors.labels(PATH, "triton_unavailable").inc()
                    m.retries.labels(PATH, "triton").inc()
                    stats.triton_retries += 1
                    if paused.paused is None:
                        log.warning("Triton unavailable, partitions paused, retrying: %s", exc)
                    paused.wait(next(delays))
        finally:
            if paused.resume():
                log.info("Triton answered again after %d retries; partitions resumed", stats.triton_retries)

    # ----- the transaction ---------------------------------------------------------------------
    def _stage(self, pending: Sequence[_Pending], records, stats: BatchStats) -> None:
        """Produce a scored batch (records + dead letters) into the open transaction
        (:class:`scorer.kafka_txn.Transactions`: committed on the worker thread; aborted and
        rewound, so read again, when it fails)."""
        subject = self.strategy.subject

        def produce() -> None:
            for p, rec in records:
                self.producer.produce(self.scores_topic, key=p.event.key, value=self.encoder.encode(subject, rec))
            for p in pending:
                if p.dead is not None:
                    stats.dead_letter_entries.append(self._produce_dead_letter(p))
                    stats.dead_letters += 1

        if not self.txns.produce_batch([p.msg for p in pending], produce, (stats, records)):
            stats.aborted = True

    def _committed(self, batch) -> None:
        """A batch's transaction committed: count it, log and count its dead letters once."""
        stats, records = batch
        m = self.metrics
        self.strategy.committed(self, records)
        stats.scored = len(records)
        for entry in stats.dead_letter_entries:  # committed: one log line and one count each
            log_dead_letter(entry)
            m.dlq.labels(entry.topic, entry.reason).inc()
        self.stats.batches += 1
        self.stats.consumed += stats.consumed
        self.stats.scored += stats.scored
        self.stats.dead_letters += stats.dead_letters

    @staticmethod
    def _aborted(batch) -> None:
        batch[0].aborted = True

    def _count_abort(self) -> None:
        self.stats.aborts += 1

    def _produce_dead_letter(self, p: _Pending) -> DeadLetterEntry:
        """Produce the dead letter of ``p`` into the open transaction; returns its entry."""
        reason, detail = p.dead
        msg = p.msg
        entry = dead_letter_entry(service=SCORE, group=self.group_id, topic=msg.topic(), partition=msg.partition(),
                                  offset=msg.offset(), reason=reason, detail=detail, value=msg.value(), key=msg.key(),
                                  failed_at=self.now_ns())
        self.producer.produce(self.dlq_topic, key=entry.key, value=self.codec.encode(DLQ_SUBJECT, entry.to_record()),
                              headers=entry.headers())
        return entry


def run_rebuilding(scorer: KafkaScorer, build: Callable[[], KafkaScorer], *, idle_exit_s: float | None = None,
                   on_new: Callable[[KafkaScorer], None] = lambda scorer: None,
                   backoff: Backoff = Backoff(initial_s=0.2, max_s=10.0, jitter=0.0),
                   sleep: Callable[[float], None] = time.sleep) -> tuple[LoopStats, int]:
    """Run a started ``scorer`` until it stops; ``(its stats, client rebuilds)``.

    librdkafka clients in a fatal, fenced or wedged state never recover (FatalConsumerError):
    they are closed (bounded: a wedged client is abandoned, not waited for) and ``build()`` makes
    new ones, retried with ``backoff`` while the new ones fail too (e.g. the broker is still down).
    The new producer (same transactional.id) fences the old one and settles its open transaction;
    the new consumer resumes from the committed offsets: nothing is lost, nothing scored twice.
    ``on_new(scorer)`` is called for each new scorer before it starts (signal handlers)."""
    rebuilds = 0
    while True:
        try:
            scorer.run(idle_exit_s=idle_exit_s)
        except FatalConsumerError as exc:
            stats = scorer.stats
            delays = backoff.delays()
            while True:
                log.error("%s; rebuilding the Kafka clients", exc)
                scorer.metrics.errors.labels(PATH, "fatal_consumer").inc()
                scorer.metrics.retries.labels(PATH, "rebuild").inc()
                scorer.close(timeout_s=5.0)
                rebuilds += 1
                sleep(next(delays))
                if scorer.stopping:  # SIGTERM/SIGINT meanwhile: stop instead of rebuilding
                    return stats, rebuilds
                scorer = build()
                scorer.stats = stats
                on_new(scorer)
                try:
                    scorer.start()
                    log.info("Kafka clients rebuilt (%d rebuilds so far)", rebuilds)
                    break
                except FatalConsumerError as again:
                    exc = again
            continue
        except BaseException:
            scorer.close()
            raise
        scorer.close()
        return scorer.stats, rebuilds


def _close_quietly(consumer) -> None:
    try:
        consumer.close()
    except Exception as exc:  # noqa: BLE001 - closing a failed client; its replacement takes over
        log.warning("closing the consumer: %s", exc)
