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

from schemas.dead_letter import (DEFAULT_MAX_PAYLOAD_BYTES, DLQ_SUBJECT, INVALID_ROW, MODEL_REJECTED, ROW_ERRORS, SCORE,
                                 DeadLetterEntry, RecordRejected, check_record, dead_letter_entry, log_dead_letter)
from schemas.plan import ServingPlan
from kafka_io.bounded import BoundedCalls, BoundedJob, ClientsWedged, FatalConsumerError
from kafka_io.polling import consume_ready

from .fallbacks import WindowFallback
from .metrics import ScorerMetrics
from .pipeline import (PreparedEvent, batch_tensors, event_tensors, interactions_to_append, prepare_event,
                       score_record, split_windows, window_requests)
from .triton import ModelOutput, TritonRequestError, TritonUnavailable

log = logging.getLogger(__name__)
PATH = "kafka"
SCORES_SUBJECT = "scores-value"
APPEND_FAILED = "window_append_failed"


def _must_rebuild(err) -> bool:
    """Fenced or fatal producer errors: no call on this producer can succeed again."""
    from confluent_kafka import KafkaError
    return bool(err.fatal()) or err.code() in (KafkaError._FENCED, KafkaError._FATAL, KafkaError.PRODUCER_FENCED,
                                               KafkaError.INVALID_PRODUCER_EPOCH,
                                               KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)


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
class _Txn:
    """What one Kafka transaction holds: batches produced into it, their offsets, and where each
    partition has to be rewound to if it is aborted (its first offset = the last committed one)."""
    began: float
    offsets: dict = field(default_factory=dict)  # (topic, partition) -> next offset to consume
    first: dict = field(default_factory=dict)  # (topic, partition) -> first offset in the txn
    batches: list = field(default_factory=list)  # (BatchStats, records) per batch

    def add(self, pending, records, stats: BatchStats) -> None:
        for p in pending:
            key = (p.msg.topic(), p.msg.partition())
            off = p.msg.offset()
            if off + 1 > self.offsets.get(key, -1):
                self.offsets[key] = off + 1
            if off < self.first.get(key, off + 1):
                self.first[key] = off
        self.batches.append((stats, records))


def _first_offsets(pending) -> dict:
    first: dict = {}
    for p in pending:
        key = (p.msg.topic(), p.msg.partition())
        off = p.msg.offset()
        if off < first.get(key, off + 1):
            first[key] = off
    return first


@dataclass
class LoopStats:
    batches: int = 0
    consumed: int = 0
    scored: int = 0
    dead_letters: int = 0
    aborts: int = 0
    triton_retries: int = 0
    extra: dict = field(default_factory=dict)


class KafkaScorer:
    """The consume-score-produce loop. Clients are injected (real ones in production and tests)."""

    def __init__(self, plan: ServingPlan, *, consumer: Any, producer: Any, codec: Any, triton: Any,
                 fallback: WindowFallback, facts_topics: Sequence[str], scores_topic: str, dlq_topic: str,
                 store: Any = None, append_scored: bool = False, max_batch: int = 256,
                 poll_timeout_s: float = 0.005, key_column: str | None = None,
                 metrics: ScorerMetrics | None = None, backoff_s: float = 0.1, backoff_max_s: float = 2.0,
                 now_ns: Callable[[], int] = time.time_ns, txn_timeout_s: float = 30.0,
                 encoder: Any = None, strategy: Any = None, txn_call_timeout_s: float = 10.0,
                 init_timeout_s: float = 120.0, commit_interval_s: float = 0.0, watchdog_s: float = 30.0,
                 batch_interval_s: float = 0.0, group_id: str = "",
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
        self.plan = plan
        # written into every dead letter (the consumer's group.id; the consumer does not expose it)
        self.group_id = group_id
        # larger records are dead-lettered as oversize (the same limit as ingest on a shared topic)
        self.max_payload_bytes = max_payload_bytes
        # Optional batch strategy (ranking plans: scorer.recommend_kafka.RankingStrategy): it turns a
        # consumed batch into its own records; the loop, retries and transaction stay these.
        self.strategy = strategy
        self.consumer = consumer
        self.producer = producer
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
        self.poll_timeout_s = poll_timeout_s
        self.batch_interval_s = batch_interval_s
        self._batch_started = 0.0
        self.key_column = key_column
        self.metrics = metrics or ScorerMetrics()
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.now_ns = now_ns
        # every blocking librdkafka call gets txn_call_timeout_s (librdkafka's timeout) and a hard
        # deadline a little later (BoundedCalls); commit/abort are resumed within txn_timeout_s
        self.txn_timeout_s = txn_timeout_s
        self.txn_call_timeout_s = min(txn_call_timeout_s, txn_timeout_s)
        self.init_timeout_s = init_timeout_s
        self._calls = BoundedCalls()
        # Pipelined transactions: batch k+1 is decoded, read and scored while batch k's transaction
        # commits on the worker thread; its records go into the next transaction as soon as that
        # commit is done. commit_interval_s > 0 lets one transaction span several batches (fewer
        # transactions: less broker CPU, at most that much more latency).
        self.commit_interval_s = commit_interval_s
        # After watchdog_s without input: is a broker still reachable, and are partitions assigned?
        # librdkafka 2.16 can lose every broker for good across a broker restart (#5301, with
        # metadata.recovery.strategy=none) or keep a dead group coordinator (#5511, with the
        # default re-bootstrap) without raising anything: new clients are the way out.
        self.watchdog_s = watchdog_s
        self._last_input = time.monotonic()
        self._next_check = 0.0
        self._unreachable_since: float | None = None
        self._unassigned_since: float | None = None
        self._txn: _Txn | None = None  # open: records produced, not committing yet
        self._committing: tuple[_Txn, BoundedJob] | None = None  # commit running on the worker
        self.model_max_batch = max_batch
        self._stop = threading.Event()
        self._revoked = False
        self._slipped: dict[tuple[str, int], int] = {}  # offsets polled while paused, to re-read
        self.stats = LoopStats()

    # ----- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        # Fences a previous incarnation with the same transactional.id and completes or aborts its
        # open transaction. Retriable failures (broker still down) are retried up to init_timeout_s.
        self._call_resuming("init_transactions", self.producer.init_transactions, self.init_timeout_s, 0.5)
        log.info("transactions initialised in %.2fs", time.monotonic() - t0)
        self.consumer.subscribe(self.facts_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        try:
            self.model_max_batch = max(1, min(self.max_batch, self.triton.max_batch_size()))
        except Exception as exc:  # noqa: BLE001 - Triton may be down at start: learn it later
            log.warning("could not read the model's max_batch_size (%s); using %d", exc, self.max_batch)

    def request_stop(self) -> None:
        self._stop.set()

    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        self.assigned_at = time.monotonic()

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
        last_data = time.monotonic()
        while not self._stop.is_set():
            msgs = [m for m in self._next_batch() if self._usable(m)]
            if msgs:
                self.process(msgs)
                last_data = self._last_input = time.monotonic()  # after: a batch that waited out an outage
            else:
                self._watchdog()
            self._advance_commits(idle=not msgs)
            if not msgs and self._txn is None and self._committing is None \
                    and idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                break
            if max_events is not None and self.stats.consumed >= max_events:
                break
        self.flush_commits()  # leave nothing uncommitted behind: a successor starts after it
        return self.stats

    def _watchdog(self) -> None:
        now = time.monotonic()
        if self.watchdog_s <= 0 or now - self._last_input < self.watchdog_s or now < self._next_check:
            return
        self._next_check = now + min(10.0, self.watchdog_s / 3)
        from confluent_kafka import KafkaException
        try:
            self.consumer.list_topics(self.facts_topics[0], timeout=5.0)
            self._unreachable_since = None
        except KafkaException as exc:
            self._unreachable_since = self._unreachable_since or now
            log.warning("no broker answers a metadata request: %s", exc)
            if now - self._unreachable_since >= self.watchdog_s:
                raise FatalConsumerError(f"no broker reachable for {now - self._unreachable_since:.0f} s") from exc
        if self.consumer.assignment():
            self._unassigned_since = None
            return
        # (an instance with more peers than partitions legitimately has none: it just rejoins now and then)
        self._unassigned_since = self._unassigned_since or now
        if now - self._unassigned_since >= 2 * self.watchdog_s:
            raise FatalConsumerError(f"no partitions assigned for {now - self._unassigned_since:.0f} s")

    def _next_batch(self) -> list:
        """The next batch: paced by ``batch_interval_s``, and at once when input has been idle.

        A batch starts at most every ``batch_interval_s`` (what arrives meanwhile joins it; a full
        ``max_batch`` goes at once): each batch costs a Triton call and a transaction, whose broker
        work per event shrinks as batches grow. After an idle spell the first event is taken
        without waiting. (``consume(n, timeout)`` waits until it has ``n`` messages or the timeout
        has passed, which is what the pacing relies on.)"""
        now = time.monotonic()
        wait = self._batch_started + self.batch_interval_s - now
        msgs = self.consumer.consume(num_messages=self.max_batch, timeout=max(0.0, wait))
        if not msgs:
            timeout = self._poll_timeout()
            if timeout <= 0:
                return msgs
            msgs = consume_ready(self.consumer, self.max_batch, timeout)
        if msgs:
            self._batch_started = time.monotonic()
        return msgs

    def _poll_timeout(self) -> float:
        if self._txn is not None and self._committing is None:
            # an open transaction waits for the interval (or for the input to pause)
            return max(0.0, min(self.poll_timeout_s, self._txn.began + self.commit_interval_s - time.monotonic()))
        return self.poll_timeout_s

    def close(self, timeout_s: float = 10.0) -> None:
        """Leave the group and stop, waiting at most ``timeout_s`` for the consumer's close (it talks
        to the group coordinator, which may be the thing that is stuck). The producer holds nothing
        to flush: every record it sends belongs to a transaction, committed or not."""
        # after a failure, what is open or committing is abandoned: the next producer with this
        # transactional.id fences it (normally run() has committed everything already)
        self._txn, self._committing = None, None
        self._calls.stop()
        closer = threading.Thread(target=_close_quietly, args=(self.consumer,), name="kafka-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        if closer.is_alive():
            log.warning("consumer close did not finish within %.0f s; abandoned", timeout_s)

    def _hard_deadline(self) -> float:
        return self.txn_call_timeout_s + 5.0

    def _usable(self, msg) -> bool:
        err = msg.error()
        if err is None:
            return True
        from confluent_kafka import KafkaError
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
        if self.strategy is not None:
            return self._process_with_strategy(msgs)
        m = self.metrics
        self._revoked = False
        stats = BatchStats(consumed=len(msgs))
        pending = self.decode(msgs)
        events = [p for p in pending if p.event is not None]
        flags: tuple[str, ...] = ()
        if events and self.append_scored and self.store is not None:
            try:
                self.store.append(interactions_to_append(self.plan, [p.event for p in events]))
            except Exception as exc:  # noqa: BLE001 - scoring goes on; the flag says what is missing
                log.warning("self-append failed: %s", exc)
                m.errors.labels(PATH, "window_append").inc()
                flags = (APPEND_FAILED,)
        keys, as_of = window_requests([p.event for p in events])
        with m.stage(PATH, "window_read"):
            read = self.fallback.read(keys, as_of)
        if keys:
            m.window_reads.labels(PATH).inc()
        flags = flags + read.degraded
        with m.stage(PATH, "tensor_build"):
            requests, ready = [], []
            for p, windows in zip(events, split_windows([p.event for p in events], read.windows)):
                try:
                    requests.append(event_tensors(self.plan, p.event, windows))
                    ready.append(p)
                except ROW_ERRORS as exc:
                    p.dead = (INVALID_ROW, str(exc))
        outputs = self._infer_all(requests, stats) if requests else []
        if self._revoked:
            # Partitions moved while Triton was down: their new owner re-reads the uncommitted batch.
            log.warning("partitions revoked during the batch; dropping it (offsets not committed)")
            m.retries.labels(PATH, "revoked").inc()
            stats.aborted = True
            return stats
        now = self.now_ns()
        records = []
        for p, out in zip(ready, outputs):
            if isinstance(out, Exception):
                p.dead = (MODEL_REJECTED, str(out))
                continue
            model_out, i = out
            latency_ms = (time.perf_counter() - p.received) * 1000
            records.append((p, score_record(self.plan, p.event, model_out.scores[i], model_out.cold_start[i],
                                            model_name=model_out.name_at(i),
                                            model_version=model_out.version_at(i), latency_ms=latency_ms,
                                            degraded=flags, scored_at=now)))
        self._stage(pending, records, stats)
        self.stats.triton_retries += stats.triton_retries
        return stats

    def _process_with_strategy(self, msgs) -> BatchStats:
        """One batch through ``self.strategy.process(scorer, msgs, stats) -> (pending, records)``,
        committed exactly like :meth:`process` (records + dead letters + offsets, one transaction)."""
        self._revoked = False
        stats = BatchStats(consumed=len(msgs))
        pending, records = self.strategy.process(self, msgs, stats)
        if self._revoked:
            log.warning("partitions revoked during the batch; dropping it (offsets not committed)")
            self.metrics.retries.labels(PATH, "revoked").inc()
            stats.aborted = True
            return stats
        self._stage(pending, records, stats)
        self.stats.triton_retries += stats.triton_retries
        return stats

    # ----- Triton with pause-and-retry -----------------------------------------------------------
    def _infer_all(self, requests, stats: BatchStats) -> list:
        outs: list = []
        step = self.model_max_batch
        for start in range(0, len(requests), step):
            chunk = requests[start:start + step]
            outs.extend(self._infer_chunk(chunk, stats))
        return outs

    def _infer_chunk(self, chunk, stats: BatchStats) -> list:
        try:
            out = self._infer_retrying(batch_tensors(self.plan, chunk), stats)
            self.metrics.batch_size.labels(PATH).observe(len(chunk))
            return [(out, i) for i in range(len(chunk))]
        except TritonRequestError as exc:
            if len(chunk) == 1:
                self.metrics.errors.labels(PATH, "triton_rejected").inc()
                return [exc]
        return [r for req in chunk for r in self._infer_chunk([req], stats)]

    def _infer_retrying(self, tensors, stats: BatchStats) -> ModelOutput:
        delay = self.backoff_s
        paused = None
        try:
            while True:
                try:
                    with self.metrics.stage(PATH, "triton"):
                        self.metrics.triton_calls.labels(PATH).inc()
                        out = self.triton.infer(tensors)
                    self.metrics.observe_model(out.model_name, out.model_version)
                    return out
                except TritonUnavailable as exc:
                    self.metrics.errors.labels(PATH, "triton_unavailable").inc()
                    self.metrics.retries.labels(PATH, "triton").inc()
                    stats.triton_retries += 1
                    if paused is None:
                        paused = list(self.consumer.assignment())
                        self.consumer.pause(paused)
                        log.warning("Triton unavailable, partitions paused, retrying: %s", exc)
                    self._wait(delay)
                    delay = min(delay * 2, self.backoff_max_s)
        finally:
            if paused is not None:
                self._rewind_to_batch()
                self.consumer.resume(paused)
                log.info("Triton answered again after %d retries; partitions resumed", stats.triton_retries)

    def _wait(self, seconds: float) -> None:
        """Wait while serving the group protocol: poll() on paused partitions returns nothing,
        and anything that still slips through is forgotten and re-read by :meth:`_rewind_to_batch`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            msg = self.consumer.poll(min(0.1, max(0.0, deadline - time.monotonic())))
            if msg is not None and msg.error() is None:
                key = (msg.topic(), msg.partition())
                self._slipped[key] = min(self._slipped.get(key, msg.offset()), msg.offset())

    def _rewind_to_batch(self) -> None:
        from confluent_kafka import TopicPartition
        for (topic, part), offset in list(self._slipped.items()):
            self.consumer.seek(TopicPartition(topic, part, offset))
        self._slipped = {}

    # ----- the transaction ---------------------------------------------------------------------
    def _stage(self, pending: Sequence[_Pending], records, stats: BatchStats) -> None:
        """Produce a scored batch (records + dead letters) into the open transaction.

        The transaction (records + dead letters + consumed offsets) is committed by
        :meth:`_start_commit` on the worker thread. If it, or this batch's production, fails: the
        transaction is aborted, nothing becomes visible, and every partition it and this batch
        read is rewound to its first offset (= the last committed one), so all of it is read again.
        ``FatalConsumerError`` when that cannot be settled with these clients (fenced, fatal,
        wedged, commit outcome unknown, abort impossible): the caller rebuilds them, which settles
        it safely (see :class:`FatalConsumerError`)."""
        from confluent_kafka import KafkaException
        if self._committing is not None:
            t0 = time.perf_counter()
            ok = self._finish_commit(also_rewind=_first_offsets(pending))
            self.metrics.stage_seconds.labels(PATH, "commit_wait").observe(time.perf_counter() - t0)
            if not ok:  # aborted: this batch was rewound with it and is read again
                stats.aborted = True
                return
        subject = getattr(self.strategy, "subject", SCORES_SUBJECT)
        txn = self._txn
        try:
            if txn is None:
                try:
                    self.producer.begin_transaction()
                except KafkaException as exc:
                    raise FatalConsumerError(f"begin_transaction failed: {exc.args[0]}") from exc
                txn = self._txn = _Txn(began=time.monotonic())
            for p, rec in records:
                self.producer.produce(self.scores_topic, key=p.event.key, value=self.encoder.encode(subject, rec))
            for p in pending:
                if p.dead is not None:
                    stats.dead_letter_entries.append(self._produce_dead_letter(p))
                    stats.dead_letters += 1
        except KafkaException as exc:
            err = exc.args[0]
            self.metrics.errors.labels(PATH, "transaction").inc()
            self._txn = None
            if _must_rebuild(err) or not (err.txn_requires_abort() or err.retriable()):
                raise FatalConsumerError(f"producing into the transaction failed: {err}") from exc
            log.warning("transaction aborted (produce), its batches will be re-read: %s", err)
            self._abort_and_rewind(txn.first, merge=_first_offsets(pending))
            stats.aborted = True
            return
        txn.add(pending, records, stats)
        if time.monotonic() - txn.began >= self.commit_interval_s:
            self._start_commit()

    def _advance_commits(self, idle: bool) -> None:
        """Settle a finished commit; start the open transaction's commit when it is due (or at once
        when the input paused: nothing more would join it)."""
        if self._committing is not None and self._committing[1].done.is_set():
            self._finish_commit()
        if self._txn is not None and self._committing is None and (
                idle or time.monotonic() - self._txn.began >= self.commit_interval_s):
            self._start_commit()

    def flush_commits(self) -> None:
        """Commit everything produced so far and wait for it (stop, revocation)."""
        if self._committing is not None:
            self._finish_commit()
        if self._txn is not None:
            self._start_commit()
            self._finish_commit()

    def _start_commit(self) -> None:
        from confluent_kafka import TopicPartition
        txn, self._txn = self._txn, None
        tps = [TopicPartition(t, part, off) for (t, part), off in txn.offsets.items()]
        job = self._calls.submit("send_offsets_to_transaction", self._commit_job, tps,
                                 self.consumer.consumer_group_metadata())
        self._committing = (txn, job)

    def _commit_job(self, tps, group_metadata):
        """On the worker thread: offsets into the transaction, then commit (resumed while
        retriable). Returns None, or (phase, KafkaException) for the main thread to settle."""
        from confluent_kafka import KafkaException
        phase = "send_offsets"
        try:
            t0 = time.perf_counter()
            self.producer.send_offsets_to_transaction(tps, group_metadata, self.txn_call_timeout_s)
            self.metrics.stage_seconds.labels(PATH, "send_offsets").observe(time.perf_counter() - t0)
            phase = "commit"
            self._calls.current.mark("commit_transaction")
            deadline = time.monotonic() + self.txn_timeout_s
            while True:
                try:
                    self.producer.commit_transaction(self.txn_call_timeout_s)
                    # the broker's part only (the main thread may notice the result later)
                    self.metrics.stage_seconds.labels(PATH, "commit").observe(time.perf_counter() - t0)
                    return None
                except KafkaException as exc:
                    # retriable (e.g. timed out while the coordinator restarts): the commit goes
                    # on in the background, and calling it again resumes it
                    err = exc.args[0]
                    if not err.retriable() or err.txn_requires_abort() or _must_rebuild(err) \
                            or time.monotonic() > deadline:
                        raise
                    log.warning("commit not confirmed yet, resuming it: %s", err)
                    time.sleep(0.1)
                    self._calls.current.mark("commit_transaction")
        except KafkaException as exc:
            return phase, exc

    def _finish_commit(self, also_rewind: dict | None = None) -> bool:
        """Wait (bounded) for the commit on the worker; account a success, or abort + rewind."""
        txn, job = self._committing
        outcome = job.result(self._hard_deadline())  # per call; ClientsWedged past it
        self._committing = None
        m = self.metrics
        if outcome is None:
            total = m.stage_seconds.labels(PATH, "total")
            for stats, records in txn.batches:
                if self.strategy is not None:
                    self.strategy.committed(self, records)
                else:
                    m.observe_records(PATH, [rec for _, rec in records])
                    for _, rec in records:
                        total.observe(rec["latency_ms"] / 1000)
                stats.scored = len(records)
                for entry in stats.dead_letter_entries:  # committed: one log line and one count each
                    log_dead_letter(entry)
                    m.dlq.labels(entry.topic, entry.reason).inc()
                self.stats.batches += 1
                self.stats.consumed += stats.consumed
                self.stats.scored += stats.scored
                self.stats.dead_letters += stats.dead_letters
            return True
        phase, exc = outcome
        err = exc.args[0]
        m.errors.labels(PATH, "transaction").inc()
        if _must_rebuild(err):
            raise FatalConsumerError(f"transaction ({phase}) failed: {err}") from exc
        if phase == "commit" and not err.txn_requires_abort():
            # the commit may still complete on the broker: only a new producer (same
            # transactional.id) can settle it; the new consumer then reads what was committed
            raise FatalConsumerError(f"transaction commit outcome unknown: {err}") from exc
        if not (err.txn_requires_abort() or err.retriable()):
            raise FatalConsumerError(f"transaction ({phase}) failed: {err}") from exc
        log.warning("transaction aborted (%s), its batches will be re-read: %s", phase, err)
        for stats, _ in txn.batches:
            stats.aborted = True
        self._abort_and_rewind(txn.first, merge=also_rewind)
        return False

    def _abort_and_rewind(self, first: dict, merge: dict | None = None) -> None:
        self._abort_resuming()
        rewind = dict(first)
        for key, off in (merge or {}).items():
            rewind[key] = min(off, rewind.get(key, off))
        self._rewind(rewind)
        self.stats.aborts += 1
        self.metrics.retries.labels(PATH, "abort").inc()

    def _abort_resuming(self) -> None:
        """abort_transaction, resumed on retriable failures for at most ``txn_timeout_s``."""
        from confluent_kafka import KafkaException
        try:
            self._call_resuming("abort_transaction", self.producer.abort_transaction, self.txn_timeout_s, 0.2,
                                stop_on=_must_rebuild)
        except KafkaException as exc:
            raise FatalConsumerError(f"cannot abort the transaction: {exc.args[0]}") from exc

    def _call_resuming(self, what: str, fn: Callable[[float], Any], budget_s: float, pause_s: float,
                       stop_on: Callable[[Any], bool] = lambda err: False) -> None:
        """``fn(txn_call_timeout_s)`` as a bounded call, called again after ``pause_s`` while it fails
        retriably, for at most ``budget_s``; any other failure (or ``stop_on(err)``) is raised."""
        from confluent_kafka import KafkaException
        deadline = time.monotonic() + budget_s
        while True:
            try:
                self._calls.call(what, self._hard_deadline(), fn, self.txn_call_timeout_s)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or stop_on(err) or time.monotonic() > deadline:
                    raise
                log.warning("%s not done yet, retrying: %s", what, err)
                time.sleep(pause_s)

    def _rewind(self, first: dict[tuple[str, int], int]) -> None:
        """Seek every partition of an aborted batch back to its first offset. A partition no longer
        assigned is skipped (its new owner starts from the committed offset); one that is assigned
        but cannot be rewound would be skipped past by the next commit -- rebuild instead."""
        from confluent_kafka import KafkaException, TopicPartition
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for (topic, part), off in first.items():
            if (topic, part) not in assigned:
                continue
            try:
                self.consumer.seek(TopicPartition(topic, part, off))
            except KafkaException as exc:
                raise FatalConsumerError(f"cannot rewind {topic}[{part}] to {off} after an abort: {exc}") from exc

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


def _close_quietly(consumer) -> None:
    try:
        consumer.close()
    except Exception as exc:  # noqa: BLE001 - closing a failed client; its replacement takes over
        log.warning("closing the consumer: %s", exc)
