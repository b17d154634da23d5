"""The ingest loop: consume a batch -> decode -> ONE store append -> DLQ acked -> commit.

Delivery contract (exactly-once *effect* on the windows):

* Offsets are committed only after the window store acknowledged the batch's appends and the
  broker acknowledged the batch's dead letters. A crash at any point before the commit makes
  Kafka redeliver the batch (at-least-once delivery), never skip it.
* Appends are idempotent by (event time, event id) in every window store, so a redelivered
  record is a no-op. At-least-once delivery + idempotent appends = each event is in its windows
  exactly once, whatever was killed when.
* A store failure (Redis down, slow) retries the same batch with capped backoff; nothing is
  committed or dropped meanwhile. On shutdown the retry gives up after a grace period without
  committing, so the batch is redelivered later.

Pipelining: while the store applies batch k (a round trip; Redis works on its own core), the
loop already consumes and decodes batch k+1. At most ``pipeline_depth`` batches are in flight;
they are written by one writer thread, so they complete -- and are committed -- in order.
The commit after an acknowledged batch is asynchronous (cumulative offsets; a lost or failed
commit is covered by the next one, or means a harmless redelivery); commits in the revoke
callback and on close are synchronous.

Rebalances: the revoke callback runs inside ``consume``; it first waits for the in-flight
batches, commits every acknowledged offset of the revoked partitions while this member still
owns them, and only then lets the rebalance proceed.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import redis
from confluent_kafka import KafkaException, TopicPartition

from kafka_io.retry import Backoff, GaveUp, retry_until
from rti_store.base import StoreUnavailable
from schemas.dead_letter import STORE_REJECTED, DeadLetterEntry, dead_letter_log, log_dead_letter
from streams.dlq import DeadLetterSink
from streams.metrics import IngestMetrics
from streams.rebuild import StateRebuild
from streams.records import DeadLetter, DecodedBatch, RecordDecoder, dead_letter_of, decode_batch

log = logging.getLogger(__name__)


def default_transient_errors() -> tuple[type[BaseException], ...]:
    """Store errors that mean "unavailable, try again" (anything else means "refused")."""

    errors: list[type[BaseException]] = [StoreUnavailable, ConnectionError, TimeoutError]
    try:
        errors.append(redis.exceptions.RedisError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(errors)


@dataclass(frozen=True)
class LoopSettings:
    batch_size: int = 5000  # records per consume() call, i.e. per store round trip
    batch_timeout_s: float = 0.1  # max wait for a batch to fill
    shutdown_grace_s: float = 30.0  # on stop, how long a failing store is still retried
    dlq_timeout_s: float = 30.0
    lag_interval_s: float = 1.0
    pipeline_depth: int = 1  # batches written to the store while the next is decoded (0 = none)
    # commit each acknowledged batch asynchronously (a synchronous commit costs a broker round
    # trip per batch); revoke and close still commit synchronously
    async_commit: bool = True
    backoff: Backoff = field(default_factory=Backoff)


@dataclass
class LoopStats:
    batches: int = 0
    records: int = 0
    interactions: int = 0
    dead_letters: int = 0
    dead_letters_skipped: int = 0  # bad records of topics another service dead-letters
    commits: int = 0
    commit_failures: int = 0
    store_retries: int = 0


class IngestLoop:
    """One consumer's batching loop. ``consumer`` is a subscribed-by-us confluent ``Consumer``;
    ``store`` anything with ``append(items)``; time is injected for tests."""

    def __init__(self, consumer: Any, store: Any, decoder: RecordDecoder, dlq: DeadLetterSink,
                 metrics: IngestMetrics, settings: LoopSettings = LoopSettings(),
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 transient_errors: tuple[type[BaseException], ...] | None = None,
                 rebuild: StateRebuild | None = None):
        self.transient_errors = transient_errors or default_transient_errors()
        self.rebuild = rebuild  # replays lost window state from Kafka (None: not checked)
        self._batch_seq = 0
        self.consumer = consumer
        self.store = store
        self.decoder = decoder
        self.dlq = dlq
        self.metrics = metrics
        self.settings = settings
        self.stats = LoopStats()
        self._monotonic = monotonic
        self._sleep = sleep
        self._pending: dict[tuple[str, int], int] = {}  # acknowledged, not yet committed
        self._assigned: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._stop_seen_at: float | None = None
        self._next_lag_at = 0.0
        # (store write, batch, its dead-letter entries, start time, batch sequence number)
        self._in_flight: deque[tuple[Future, DecodedBatch, list[DeadLetterEntry], float, int]] = deque()
        # one writer: batches reach the store, and complete, in submission order
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relstream-store-writer")

    # ----------------------------------------------------------------- subscription
    def subscribe(self, topics) -> None:
        self.consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def _on_assign(self, consumer, partitions) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        # offsets we still hold for a partition we get (back) are stale: the group's committed
        # offset is the truth and re-reading from it is harmless (idempotent appends)
        for tp in tps:
            self._pending.pop(tp, None)
        self._assigned |= tps
        if self.rebuild is not None:
            self.rebuild.check_soon()
        log.info("assigned %s", sorted(tps))

    def _on_revoke(self, consumer, partitions) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        try:
            self.drain()  # batches in flight first: their offsets belong to this generation
        except GaveUp:
            self._in_flight.clear()
        mine = {tp: off for tp, off in self._pending.items() if tp in tps}
        if mine:
            self._commit_offsets(mine)
        for tp in tps:
            self._pending.pop(tp, None)
            self.metrics.drop_lag(*tp)
        self._assigned -= tps
        if self.rebuild is not None:
            self.rebuild.forget(tps)
        log.info("revoked %s", sorted(tps))

    def _on_lost(self, consumer, partitions) -> None:
        # the group already moved on: committing now would fail; redelivery covers the rest
        tps = {(p.topic, p.partition) for p in partitions}
        try:
            self.drain()  # the appends still land (harmless); their commits may fail
        except GaveUp:
            self._in_flight.clear()
        for tp in tps:
            self._pending.pop(tp, None)
            self.metrics.drop_lag(*tp)
        self._assigned -= tps
        if self.rebuild is not None:
            self.rebuild.forget(tps)
        log.warning("lost %s", sorted(tps))

    @property
    def assigned(self) -> set[tuple[str, int]]:
        return set(self._assigned)

    # ----------------------------------------------------------------- the loop
    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, return from :meth:`run` (signal-handler safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _give_up(self) -> bool:
        if not self._stop.is_set():
            return False
        now = self._monotonic()
        if self._stop_seen_at is None:
            self._stop_seen_at = now
        return now - self._stop_seen_at >= self.settings.shutdown_grace_s

    def run(self, idle_exit_s: float | None = None) -> LoopStats:
        """Consume until :meth:`request_stop` (or ``idle_exit_s`` without records)."""
        last_records_at = self._monotonic()
        try:
            while not self._stop.is_set():
                messages = self.consumer.consume(self.settings.batch_size, self.settings.batch_timeout_s)
                now = self._monotonic()
                if messages:
                    self.submit(messages)
                    last_records_at = now
                else:
                    self.drain()  # nothing new: finish and commit what is in flight now
                    if idle_exit_s is not None and now - last_records_at >= idle_exit_s:
                        break
                self._maybe_check_state(now)
                self._maybe_update_lag(now)
            self.drain()
        except GaveUp as exc:
            log.error("stopping without committing the batches in flight (they will be redelivered): %s", exc)
        return self.stats

    def process(self, messages) -> None:
        """One batch, synchronously: returns after its offsets were committed."""
        self.submit(messages)
        self.drain()

    def submit(self, messages) -> None:
        """Decode a batch and hand its appends to the writer; completes older batches beyond
        ``pipeline_depth`` (ack -> DLQ ack -> commit, in order)."""
        t0 = self._monotonic()
        batch = decode_batch(messages, self.decoder)
        for err in batch.consumer_errors:
            self._consumer_error(err, messages)
        # asynchronous; acknowledged before the commit
        entries = self.dlq.send(batch.dead_letters) if batch.dead_letters else []
        future = self._writer.submit(self._store_batch, batch)
        self._batch_seq += 1
        self._in_flight.append((future, batch, entries, t0, self._batch_seq))
        while len(self._in_flight) > self.settings.pipeline_depth:
            self._complete_oldest()

    def drain(self) -> None:
        """Complete (and commit) every batch in flight."""
        while self._in_flight:
            self._complete_oldest()

    def _store_batch(self, batch: DecodedBatch) -> tuple[list[DeadLetter], int]:
        """Writer thread: append the batch; returns (records the store refused, their appends)."""
        if not batch.window_rows:
            return [], 0
        try:
            self._append_batch(batch)
            return [], 0
        except self.transient_errors + (GaveUp,):
            raise
        except Exception as exc:  # the store refused the content, not an outage
            log.error("window store refused a batch (%s); isolating the bad record(s)", exc)
            return self._append_one_by_one(batch)

    def _complete_oldest(self) -> None:
        future, batch, entries, t0, seq = self._in_flight[0]
        try:
            refused, refused_appends = future.result()
        except BaseException:
            # this batch is not stored: drop the later ones too, so none of their offsets can be
            # committed past it (all of them are redelivered)
            self._in_flight.clear()
            raise
        self._in_flight.popleft()
        if refused:
            batch.dead_letters.extend(refused)
            entries = entries + self.dlq.send(refused)
        if entries:
            retry_until(lambda: self.dlq.wait(self.settings.dlq_timeout_s), what="dead-letter delivery",
                        backoff=self.settings.backoff, give_up=self._give_up, on_retry=self._count_retry,
                        sleep=self._sleep)
        # acknowledged by the store (and the DLQ): only now may the offsets move
        for tp, off in batch.next_offsets.items():
            if off > self._pending.get(tp, -1):
                self._pending[tp] = off
        self._commit_offsets(dict(self._pending), asynchronous=self.settings.async_commit)
        if self.rebuild is not None and self.rebuild.replaying:
            self.rebuild.on_batch_acknowledged(batch.next_offsets, seq)

        m = self.metrics
        for topic, n in batch.records_by_topic.items():
            m.records.labels(topic).inc(n)
        appended = batch.window_rows - refused_appends
        m.interactions.inc(appended)
        for entry in entries:  # acknowledged by the broker: one log line and one count each
            log_dead_letter(entry)
            m.dlq.labels(entry.topic, entry.reason).inc()
        for (topic, reason), n in batch.skipped.items():
            m.dlq_skipped.labels(topic, reason).inc(n)
            dead_letter_log.debug("not dead-lettered by ingest service=ingest reason=%s topic=%s count=%d "
                                  "(the scorer owns this topic's dead letters)", reason, topic, n)
        m.note_event_time(batch.newest_event_time)
        m.batch_seconds.observe(self._monotonic() - t0)
        s = self.stats
        s.batches += 1
        s.records += batch.records
        s.interactions += appended
        s.dead_letters += len(entries)
        s.dead_letters_skipped += sum(batch.skipped.values())

    def _append(self, items) -> None:
        """One round trip, retried with backoff while the store is unavailable."""
        retry_until(lambda: self.store.append(items), what="window store append",
                    backoff=self.settings.backoff, give_up=self._give_up, on_retry=self._count_retry,
                    sleep=self._sleep, retry_on=self.transient_errors)

    def _append_batch(self, batch: DecodedBatch) -> None:
        """The whole batch in one round trip: the vectorised rows and the per-row ones."""
        append_rows = getattr(self.store, "append_rows", None)
        if append_rows is None:  # a store with only the row-by-row interface
            return self._append(batch.appends)
        hop_rows, items = batch.hop_rows, batch.fallback_items()
        retry_until(lambda: append_rows(hop_rows, items), what="window store append",
                    backoff=self.settings.backoff, give_up=self._give_up, on_retry=self._count_retry,
                    sleep=self._sleep, retry_on=self.transient_errors)

    def _append_one_by_one(self, batch: DecodedBatch) -> tuple[list[DeadLetter], int]:
        refused, refused_appends = [], 0
        for msg, start, end in batch.spans:
            try:
                self._append(batch.appends[start:end])
            except self.transient_errors + (GaveUp,):
                raise
            except Exception as exc:
                refused.append(dead_letter_of(msg, STORE_REJECTED, f"{type(exc).__name__}: {exc}"))
                refused_appends += end - start
        return refused, refused_appends

    def _count_retry(self, exc: BaseException, attempt: int, delay: float) -> None:
        self.stats.store_retries += 1
        self.metrics.retries.inc()

    def _consumer_error(self, err: str, messages) -> None:
        for msg in messages:
            e = msg.error()
            if e is not None and e.fatal():
                raise KafkaException(e)
        log.warning("consumer error: %s", err)

    def _commit_offsets(self, offsets: dict[tuple[str, int], int], asynchronous: bool = False) -> None:
        """Commit acknowledged offsets. Asynchronous commits (the hot path) report back through
        :meth:`on_commit`; until then the offsets stay pending and are simply committed again
        with the next batch (offsets are cumulative, so a repeat is harmless)."""
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        try:
            result = self.consumer.commit(offsets=tps, asynchronous=asynchronous)
        except KafkaException as exc:
            # e.g. a rebalance is in progress; offsets stay pending (committed on the next batch
            # or in the revoke callback), and if this member lost the partitions the new owner
            # re-reads from the last commit -- redelivery, harmless thanks to idempotent appends
            self._commit_failed(str(exc))
            return
        if not asynchronous:
            self._committed(result or [])

    def on_commit(self, err, partitions) -> None:
        """librdkafka's commit report (served inside ``consume``); set as the consumer's
        ``on_commit``."""
        if err is not None:
            self._commit_failed(str(err))
            return
        self._committed(partitions)

    def _committed(self, partitions) -> None:
        failed = [tp for tp in partitions if tp.error is not None]
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if tp.error is None and key in self._pending and self._pending[key] <= tp.offset:
                del self._pending[key]
        if failed:
            self._commit_failed(str([(tp.topic, tp.partition, str(tp.error)) for tp in failed]))
        else:
            self.stats.commits += 1

    def _commit_failed(self, why: str) -> None:
        self.stats.commit_failures += 1
        self.metrics.commit_failures.inc()
        log.warning("offset commit failed, offsets kept pending (redelivered at worst): %s", why)

    def _maybe_check_state(self, now: float) -> None:
        """Look at the store's completeness marker now and then; start replays it asks for."""
        if self.rebuild is None or not self._assigned or not self.rebuild.due(now):
            return
        self.drain()  # a seek must not race batches still in flight
        try:
            self.rebuild.check(self.assigned, self._batch_seq)
        except self.transient_errors + (KafkaException,) as exc:  # retried at the next check
            log.warning("window store completeness check failed (retried): %s", exc)

    def _maybe_update_lag(self, now: float) -> None:
        if now < self._next_lag_at or not self._assigned:
            return
        self._next_lag_at = now + self.settings.lag_interval_s
        try:
            tps = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
            for tp in self.consumer.position(tps):
                _lo, hi = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=True)
                if hi is None or hi < 0:
                    continue
                pos = tp.offset
                if pos < 0:  # nothing consumed yet in this assignment: ask the group
                    committed = self.consumer.committed([TopicPartition(tp.topic, tp.partition)], timeout=1.0)[0]
                    pos = committed.offset if committed.offset >= 0 else _lo
                self.metrics.set_lag(tp.topic, tp.partition, max(0, hi - pos))
        except KafkaException as exc:  # lag is best effort; never let it stop ingestion
            log.debug("lag update failed: %s", exc)

    def close(self) -> None:
        """Commit what is acknowledged, leave the group. Batches still failing against the store
        are retried for at most ``shutdown_grace_s``, then left uncommitted (redelivered)."""
        self.request_stop()
        try:
            self.drain()
        except GaveUp as exc:
            log.error("closing with unacknowledged batches (they will be redelivered): %s", exc)
            self._in_flight.clear()
        self._writer.shutdown(wait=True)
        self._commit_offsets(dict(self._pending))
        self.consumer.close()
