"""The Kafka transactions of `relstream score`: begin, produce into, commit (pipelined), abort + rewind.

One transaction holds the records of one or more batches, their dead letters and the consumed
offsets (``send_offsets_to_transaction``). Its commit runs on the worker thread of
:class:`kafka_io.bounded.BoundedCalls` while the next batch is scored, and every blocking
librdkafka call has a hard deadline. A transaction that fails is aborted and every partition it
read is rewound to its first offset (= the last committed one), so all of it is read again; what
cannot be settled with these clients (fenced, fatal, wedged, a commit whose outcome is unknown, an
abort that cannot finish) raises :class:`FatalConsumerError`: new clients settle it safely.

Time comes from ``clock`` / ``sleep`` (injected), so the resuming loops are testable without a broker.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kafka_io.bounded import BoundedCalls, BoundedJob, FatalConsumerError

from .kafka_pacing import CommitCadence
from .metrics import ScorerMetrics

log = logging.getLogger(__name__)
PATH = "kafka"


def must_rebuild(err) -> bool:
    """Fenced or fatal producer errors: no call on this producer can succeed again."""
    return bool(err.fatal()) or err.code() in (KafkaError._FENCED, KafkaError._FATAL, KafkaError.PRODUCER_FENCED,
                                               KafkaError.INVALID_PRODUCER_EPOCH,
                                               KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)


def first_offsets(msgs: Sequence[Any]) -> dict[tuple[str, int], int]:
    """The first offset of each partition among ``msgs`` (Kafka messages)."""
    first: dict = {}
    for msg in msgs:
        key = (msg.topic(), msg.partition())
        off = msg.offset()
        if off < first.get(key, off + 1):
            first[key] = off
    return first


@dataclass
class Txn:
    """What one Kafka transaction holds: batches produced into it, their offsets, and where each
    partition has to be rewound to if it is aborted (its first offset = the last committed one)."""

    began: float
    offsets: dict = field(default_factory=dict)  # (topic, partition) -> next offset to consume
    first: dict = field(default_factory=dict)  # (topic, partition) -> first offset in the txn
    batches: list = field(default_factory=list)  # opaque per-batch values, handed back on commit/abort

    def add(self, msgs: Sequence[Any], batch: Any) -> None:
        for msg in msgs:
            key = (msg.topic(), msg.partition())
            off = msg.offset()
            if off + 1 > self.offsets.get(key, -1):
                self.offsets[key] = off + 1
            if off < self.first.get(key, off + 1):
                self.first[key] = off
        self.batches.append(batch)


class Transactions:
    """Transactions of one producer/consumer pair, pipelined: at most one open (records being
    produced into it) and one committing (on the worker thread).

    ``on_committed(batch)`` / ``on_aborted(batch)`` are called for every batch value handed to
    :meth:`produce_batch` once its transaction's fate is known; ``on_abort()`` once per abort.
    """

    def __init__(self, producer: Any, consumer: Any, *, metrics: ScorerMetrics,
                 on_committed: Callable[[Any], None], on_aborted: Callable[[Any], None],
                 on_abort: Callable[[], None] = lambda: None, commit_interval_s: float = 0.0,
                 txn_timeout_s: float = 30.0, txn_call_timeout_s: float = 10.0,
                 calls: BoundedCalls | None = None, cadence: CommitCadence | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.producer, self.consumer, self.metrics = producer, consumer, metrics
        self.on_committed, self.on_aborted, self.on_abort = on_committed, on_aborted, on_abort
        # how long a transaction stays open (fixed commit_interval_s, or adapting to load)
        self.cadence = cadence or CommitCadence(commit_interval_s, clock=clock)
        # every blocking librdkafka call gets txn_call_timeout_s (librdkafka's timeout) and a hard
        # deadline a little later (BoundedCalls); commit/abort are resumed within txn_timeout_s
        self.txn_timeout_s = txn_timeout_s
        self.txn_call_timeout_s = min(txn_call_timeout_s, txn_timeout_s)
        self.clock, self.sleep = clock, sleep
        self.calls = calls or BoundedCalls(clock=clock)
        self.open: Txn | None = None  # records produced, not committing yet
        self.committing: tuple[Txn, BoundedJob] | None = None  # commit running on the worker

    @property
    def idle(self) -> bool:
        """Nothing open, nothing committing."""
        return self.open is None and self.committing is None

    def hard_deadline(self) -> float:
        return self.txn_call_timeout_s + 5.0

    def open_began(self) -> float | None:
        """When the open transaction began, while nothing is committing (it waits for the interval)."""
        return self.open.began if self.open is not None and self.committing is None else None

    # ----- the main thread ---------------------------------------------------------------------
    def init(self, budget_s: float) -> None:
        """``init_transactions``: fences a previous incarnation with the same transactional.id and
        completes or aborts its open transaction; retried while retriable, for ``budget_s``."""
        self.call_resuming("init_transactions", self.producer.init_transactions, budget_s, 0.5)

    def produce_batch(self, msgs: Sequence[Any], produce: Callable[[], None], batch: Any) -> bool:
        """Produce one batch into the open transaction (beginning one if needed): ``produce()``
        produces its records and dead letters; ``msgs`` are its consumed messages. False when the
        batch was aborted (it and its transaction are rewound and read again)."""
        if self.committing is not None:
            t0 = time.perf_counter()
            ok = self.finish_commit(also_rewind=first_offsets(msgs))
            self.metrics.stage_seconds.labels(PATH, "commit_wait").observe(time.perf_counter() - t0)
            if not ok:  # aborted: this batch was rewound with it and is read again
                return False
        txn = self.open
        try:
            if txn is None:
                try:
                    self.producer.begin_transaction()
                except KafkaException as exc:
                    raise FatalConsumerError(f"begin_transaction failed: {exc.args[0]}") from exc
                txn = self.open = Txn(began=self.clock())
            produce()
        except KafkaException as exc:
            err = exc.args[0]
            self.metrics.errors.labels(PATH, "transaction").inc()
            self.open = None
            if must_rebuild(err) or not (err.txn_requires_abort() or err.retriable()):
                raise FatalConsumerError(f"producing into the transaction failed: {err}") from exc
            log.warning("transaction aborted (produce), its batches will be re-read: %s", err)
            for earlier in txn.batches:
                self.on_aborted(earlier)
            self.abort_and_rewind(txn.first, merge=first_offsets(msgs))
            return False
        txn.add(msgs, batch)
        self.cadence.observe(len(msgs))
        if self.clock() - txn.began >= self.cadence.interval():
            self.start_commit()
        return True

    def advance(self, idle: bool) -> None:
        """Settle a finished commit; start the open transaction's commit when it is due (or at once
        when the input paused: nothing more would join it)."""
        if self.committing is not None and self.committing[1].done.is_set():
            self.finish_commit()
        if self.open is not None and self.committing is None and (
                idle or self.clock() - self.open.began >= self.cadence.interval()):
            self.start_commit()

    def flush(self) -> None:
        """Commit everything produced so far and wait for it (stop, revocation)."""
        if self.committing is not None:
            self.finish_commit()
        if self.open is not None:
            self.start_commit()
            self.finish_commit()

    def abandon(self) -> None:
        """Forget what is open or committing (after a failure: the next producer with this
        transactional.id fences it) and stop the worker."""
        self.open, self.committing = None, None
        self.calls.stop()

    def start_commit(self) -> None:
        txn, self.open = self.open, None
        tps = [TopicPartition(t, part, off) for (t, part), off in txn.offsets.items()]
        job = self.calls.submit("send_offsets_to_transaction", self._commit_job, tps,
                                self.consumer.consumer_group_metadata())
        self.committing = (txn, job)

    def finish_commit(self, also_rewind: dict | None = None) -> bool:
        """Wait (bounded) for the commit on the worker; account a success, or abort + rewind."""
        txn, job = self.committing
        outcome = job.result(self.hard_deadline())  # per call; ClientsWedged past it
        self.committing = None
        if outcome is None:
            for batch in txn.batches:
                self.on_committed(batch)
            return True
        phase, exc = outcome
        err = exc.args[0]
        self.metrics.errors.labels(PATH, "transaction").inc()
        if must_rebuild(err):
            raise FatalConsumerError(f"transaction ({phase}) failed: {err}") from exc
        if phase == "commit" and not err.txn_requires_abort():
            # the commit may still complete on the broker: only a new producer (same
            # transactional.id) can settle it; the new consumer then reads what was committed
            raise FatalConsumerError(f"transaction commit outcome unknown: {err}") from exc
        if not (err.txn_requires_abort() or err.retriable()):
            raise FatalConsumerError(f"transaction ({phase}) failed: {err}") from exc
        log.warning("transaction aborted (%s), its batches will be re-read: %s", phase, err)
        for batch in txn.batches:
            self.on_aborted(batch)
        self.abort_and_rewind(txn.first, merge=also_rewind)
        return False

    def abort_and_rewind(self, first: dict, merge: dict | None = None) -> None:
        self._abort_resuming()
        rewind = dict(first)
        for key, off in (merge or {}).items():
            rewind[key] = min(off, rewind.get(key, off))
        self.rewind(rewind)
        self.on_abort()
        self.metrics.retries.labels(PATH, "abort").inc()

    def rewind(self, first: dict[tuple[str, int], int]) -> None:
        """Seek every partition of an aborted batch back to its first offset. A partition no longer
        assigned is skipped (its new owner starts from the committed offset); one that is assigned
        but cannot be rewound would be skipped past by the next commit -- rebuild instead."""
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for (topic, part), off in first.items():
            if (topic, part) not in assigned:
                continue
            try:
                self.consumer.seek(TopicPartition(topic, part, off))
            except KafkaException as exc:
                raise FatalConsumerError(f"cannot rewind {topic}[{part}] to {off} after an abort: {exc}") from exc

    def _abort_resuming(self) -> None:
        """abort_transaction, resumed on retriable failures for at most ``txn_timeout_s``."""
        try:
            self.call_resuming("abort_transaction", self.producer.abort_transaction, self.txn_timeout_s, 0.2,
                               stop_on=must_rebuild)
        except KafkaException as exc:
            raise FatalConsumerError(f"cannot abort the transaction: {exc.args[0]}") from exc

    def call_resuming(self, what: str, fn: Callable[[float], Any], budget_s: float, pause_s: float,
                      stop_on: Callable[[Any], bool] = lambda err: False) -> None:
        """``fn(txn_call_timeout_s)`` as a bounded call, called again after ``pause_s`` while it fails
        retriably, for at most ``budget_s``; any other failure (or ``stop_on(err)``) is raised."""
        deadline = self.clock() + budget_s
        while True:
            try:
                self.calls.call(what, self.hard_deadline(), fn, self.txn_call_timeout_s)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or stop_on(err) or self.clock() > deadline:
                    raise
                log.warning("%s not done yet, retrying: %s", what, err)
                self.sleep(pause_s)

    # ----- the worker thread -------------------------------------------------------------------
    def _commit_job(self, tps, group_metadata):
        """Offsets into the transaction, then commit (resumed while retriable). Returns None, or
        (phase, KafkaException) for the main thread to settle."""
        phase = "send_offsets"
        try:
            t0 = time.perf_counter()
            self.producer.send_offsets_to_transaction(tps, group_metadata, self.txn_call_timeout_s)
            self.metrics.stage_seconds.labels(PATH, "send_offsets").observe(time.perf_counter() - t0)
            phase = "commit"
            self.calls.current.mark("commit_transaction")
            deadline = self.clock() + self.txn_timeout_s
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
                    if not err.retriable() or err.txn_requires_abort() or must_rebuild(err) \
                            or self.clock() > deadline:
                        raise
                    log.warning("commit not confirmed yet, resuming it: %s", err)
                    self.sleep(0.1)
                    self.calls.current.mark("commit_transaction")
        except KafkaException as exc:
            return phase, exc


class AtLeastOnce:
    """The opt-in alternative to :class:`Transactions` (``score.delivery: at_least_once``), with
    the same interface: records go out through an idempotent producer (no transaction, so no
    markers, offset writes into a transaction or commit round trips on the broker, and downstream
    consumers see a score as soon as it is written), and the consumed offsets are committed only
    after every record produced before them is acknowledged. A crash or a failed delivery between
    the two re-reads the batches since the last committed offsets: no event is lost, some may be
    scored twice. Downstream dedupes on the record's ``event_id`` (a re-scored event has the same
    ``event_id`` and key, and the same score unless its windows changed meanwhile).

    Offsets are committed when ``cadence`` says the open batches are due (as a transaction
    would be), or at once when the input paused; :meth:`flush` (stop, revocation) commits
    synchronously, so a successor starts after it.
    """

    def __init__(self, producer: Any, consumer: Any, *, metrics: ScorerMetrics,
                 on_committed: Callable[[Any], None], on_aborted: Callable[[Any], None] = lambda batch: None,
                 on_abort: Callable[[], None] = lambda: None, commit_interval_s: float = 0.0,
                 txn_call_timeout_s: float = 10.0, cadence: CommitCadence | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.producer = producer
        self.consumer, self.metrics, self.on_committed = consumer, metrics, on_committed
        self.cadence = cadence or CommitCadence(commit_interval_s, clock=clock)
        self.call_timeout_s, self.clock = txn_call_timeout_s, clock
        self.open: Txn | None = None  # produced, offsets not committed yet

    @property
    def producer(self) -> "DeliveryTracking":
        return self._producer

    @producer.setter
    def producer(self, producer: Any) -> None:
        self._producer = producer if isinstance(producer, DeliveryTracking) else DeliveryTracking(producer)

    @property
    def idle(self) -> bool:
        return self.open is None

    def open_began(self) -> float | None:
        return self.open.began if self.open is not None else None

    def init(self, budget_s: float) -> None:
        """Nothing to fence: an idempotent producer needs no initialisation round trip."""

    def produce_batch(self, msgs: Sequence[Any], produce: Callable[[], None], batch: Any) -> bool:
        if self.open is None:
            self.open = Txn(began=self.clock())
        try:
            produce()
        except KafkaException as exc:  # local queue full or a fatal producer: new clients re-read
            raise FatalConsumerError(f"producing score records failed: {exc.args[0]}") from exc
        self.producer.poll(0)  # serve delivery reports
        self.open.add(msgs, batch)
        self.cadence.observe(len(msgs))
        if self.clock() - self.open.began >= self.cadence.interval():
            self.commit(asynchronous=True)
        return True

    def advance(self, idle: bool) -> None:
        self.producer.poll(0)
        if self.open is not None and (idle or self.clock() - self.open.began >= self.cadence.interval()):
            self.commit(asynchronous=True)

    def flush(self) -> None:
        if self.open is not None:
            self.commit(asynchronous=False)

    def abandon(self) -> None:
        self.open = None

    def commit(self, asynchronous: bool) -> None:
        """Wait until every record produced so far is acknowledged, then commit the consumed
        offsets. A record not delivered: FatalConsumerError before any offset is committed (new
        clients re-read from the last committed offsets). A failed asynchronous offset commit
        only means those batches are read (and scored) again."""
        txn, self.open = self.open, None
        t0 = time.perf_counter()
        left = self.producer.flush(self.call_timeout_s)
        failed = self.producer.take_failures()
        if left or failed:
            self.metrics.errors.labels(PATH, "delivery").inc()
            raise FatalConsumerError(f"score records not delivered ({left} still queued, "
                                     f"{len(failed)} failed: {failed[:3]}); offsets not committed")
        tps = [TopicPartition(t, part, off) for (t, part), off in txn.offsets.items()]
        try:
            self.consumer.commit(offsets=tps, asynchronous=asynchronous)
        except KafkaException as exc:
            if not asynchronous:
                raise FatalConsumerError(f"committing offsets failed: {exc.args[0]}") from exc
            log.warning("offset commit failed, the batches will be read again: %s", exc.args[0])
        self.metrics.stage_seconds.labels(PATH, "commit").observe(time.perf_counter() - t0)
        for batch in txn.batches:
            self.on_committed(batch)


class DeliveryTracking:
    """A producer whose every ``produce`` records delivery failures (read with
    :meth:`take_failures`); anything else is the wrapped producer's."""

    def __init__(self, producer: Any):
        self._producer = producer
        self._failures: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def produce(self, *args, **kwargs) -> None:
        self._producer.produce(*args, on_delivery=self._delivered, **kwargs)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")

    def take_failures(self) -> list[str]:
        failures, self._failures = self._failures, []
        return failures
