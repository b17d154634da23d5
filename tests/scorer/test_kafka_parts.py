"""The Kafka scorer's parts without a broker: pacing, the watchdog, deadlines of blocking calls,
the Triton backoff while paused, resuming transaction calls and the pipelined commit. Time is a
fake clock that moves only when the code sleeps or waits (the broker tests stay in test_kafka.py,
test_delivery.py and tests/e2e)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kafka_io.bounded import BoundedCalls, ClientsWedged, FatalConsumerError
from scorer.kafka_pacing import CommitCadence, Pacing, PausedPartitions, Watchdog
from scorer.kafka_service import BatchStats, KafkaScorer
from scorer.kafka_txn import Transactions
from scorer.metrics import ScorerMetrics
from scorer.triton import ModelOutput, TritonUnavailable


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


class Msg:
    def __init__(self, topic="f", partition=0, offset=0, value=b""):
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def key(self):
        return None

    def error(self):
        return None


class FakeConsumer:
    """Serves queued batches; ``consume`` and ``poll`` advance the fake clock by their timeout
    when they have nothing (as a real consumer would block)."""

    def __init__(self, clock: Clock, batches=()):
        self.clock, self.batches = clock, list(batches)
        self.timeouts: list[float] = []
        self.paused, self.resumed, self.seeks, self.polled = [], [], [], []
        self.slip: list[Msg] = []

    def consume(self, num_messages, timeout):
        self.timeouts.append(round(timeout, 6))
        if self.batches:
            return self.batches.pop(0)[:num_messages]
        self.clock.t += timeout
        return []

    def poll(self, timeout):
        self.polled.append(timeout)
        self.clock.t += timeout
        return self.slip.pop(0) if self.slip else None

    def assignment(self):
        return [TopicPartition("f", 0), TopicPartition("f", 1)]

    def pause(self, tps):
        self.paused.append(list(tps))

    def resume(self, tps):
        self.resumed.append(list(tps))

    def seek(self, tp):
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def consumer_group_metadata(self):
        return "group-metadata"


def retriable(code=KafkaError._TIMED_OUT):
    return KafkaException(KafkaError(code, "not yet", retriable=True))


# ----- pacing ------------------------------------------------------------------------------------

def test_pacing_waits_for_the_interval_after_a_batch_and_not_after_an_idle_spell():
    clock = Clock()
    consumer = FakeConsumer(clock, [[Msg()], [Msg(), Msg()]])
    pacing = Pacing(max_batch=8, batch_interval_s=0.1, poll_timeout_s=0.2, clock=clock)
    assert len(pacing.next_batch(consumer)) == 1
    assert consumer.timeouts == [0.0]  # idle before: the first event goes at once
    clock.t += 0.03
    assert len(pacing.next_batch(consumer)) == 2
    assert consumer.timeouts[-1] == pytest.approx(0.07)  # fills until 0.1 s after the last batch start
    clock.t += 0.5
    assert pacing.next_batch(consumer) == []
    # nothing there: no fill wait (the interval passed), then one wait of the poll timeout
    assert consumer.timeouts[-2:] == [0.0, 0.2]


def test_pacing_shortens_the_wait_for_input_to_commit_an_open_transaction_on_time():
    clock = Clock()
    pacing = Pacing(max_batch=8, poll_timeout_s=0.2, commit_interval_s=0.05, clock=clock)
    assert pacing.poll_timeout(None) == 0.2
    assert pacing.poll_timeout(clock.t - 0.01) == pytest.approx(0.04)
    assert pacing.poll_timeout(clock.t - 1.0) == 0.0  # overdue: do not wait at all
    consumer = FakeConsumer(clock)
    assert pacing.next_batch(consumer, open_txn_began=clock.t - 1.0) == []
    assert consumer.timeouts == [0.0]  # only the non-blocking look


# ----- watchdog ----------------------------------------------------------------------------------

def test_watchdog_is_quiet_while_input_flows_and_raises_after_a_broker_stays_away():
    clock = Clock()
    dog = Watchdog(30.0, clock)
    probes = []

    def unreachable():
        probes.append(clock.t)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "all brokers down"))

    clock.t += 29
    dog.check(unreachable, lambda: True)
    assert probes == []  # input 29 s ago: no check yet
    clock.t += 2
    dog.check(unreachable, lambda: True)  # first failure: noted, not fatal
    assert len(probes) == 1
    clock.t += 5
    dog.check(unreachable, lambda: True)
    assert len(probes) == 1  # checks are spaced (every quiet_s / 3, at most 10 s)
    clock.t += 30
    with pytest.raises(FatalConsumerError, match="no broker reachable for 35 s"):
        dog.check(unreachable, lambda: True)


def test_watchdog_raises_after_twice_the_quiet_time_without_partitions_and_forgets_recoveries():
    clock = Clock()
    dog = Watchdog(10.0, clock)
    clock.t += 11
    dog.check(lambda: None, lambda: False)
    assert dog.unassigned_since == clock.t
    clock.t += 11
    dog.check(lambda: None, lambda: True)  # assigned again: the spell is over
    assert dog.unassigned_since is None
    clock.t += 11
    dog.check(lambda: None, lambda: False)
    clock.t += 21
    with pytest.raises(FatalConsumerError, match="no partitions assigned for 21 s"):
        dog.check(lambda: None, lambda: False)
    dog.input_seen()
    clock.t += 5
    dog.check(lambda: None, lambda: False)  # input seen 5 s ago: quiet


def test_watchdog_off():
    clock = Clock()
    dog = Watchdog(0, clock)
    clock.t += 10_000
    dog.check(lambda: 1 / 0, lambda: False)


# ----- deadlines of blocking librdkafka calls -----------------------------------------------------

def test_a_call_past_its_deadline_wedges_the_runner_and_nothing_more_runs_on_it():
    clock = Clock()
    calls = BoundedCalls(clock=clock)
    release = threading.Event()
    job = calls.submit("send_offsets_to_transaction", release.wait)
    clock.t += 6.0  # the call started 6 s ago (fake time), the deadline is 5 s
    with pytest.raises(ClientsWedged, match="send_offsets_to_transaction did not return within 5 s"):
        job.result(5.0)
    with pytest.raises(ClientsWedged, match="wedged in send_offsets_to_transaction"):
        calls.call("commit_transaction", 5.0, lambda: None)
    release.set()


def test_a_call_within_its_deadline_returns_its_value_or_raises_its_error():
    calls = BoundedCalls(clock=Clock())
    assert calls.call("sum", 5.0, sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        calls.call("div", 5.0, lambda: 1 / 0)
    calls.stop()


# ----- Triton down: pause, back off, resume -------------------------------------------------------

class FlakyTriton:
    model_name = "m"

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0

    def infer(self, tensors):
        self.calls += 1
        if self.calls <= self.failures:
            raise TritonUnavailable("connection refused")
        n = len(next(iter(tensors.values())))
        return ModelOutput(np.zeros(n, np.float32), np.zeros((n, 1), np.int8), "m", "1")


def scorer_with(plan, consumer, triton, clock, **kw):
    return KafkaScorer(plan, consumer=consumer, producer=None, codec=None, triton=triton, fallback=None,
                       facts_topics=["f"], scores_topic="s", dlq_topic="d", clock=clock, sleep=clock.sleep,
                       metrics=ScorerMetrics(), **kw)


def test_triton_down_pauses_backs_off_exponentially_up_to_the_cap_and_resumes(plan):
    clock = Clock()
    consumer = FakeConsumer(clock)
    consumer.slip = [None, Msg("f", 1, 42), Msg("f", 1, 40)]  # polled while paused: re-read after
    triton = FlakyTriton(failures=5)
    scorer = scorer_with(plan, consumer, triton, clock, backoff_s=0.1, backoff_max_s=0.5)
    try:
        stats = BatchStats()
        t0 = clock.t
        out = scorer._infer_retrying({"x": np.zeros(3)}, 3, stats)
        assert len(out.scores) == 3 and triton.calls == 6 and stats.triton_retries == 5
        # 0.1 + 0.2 + 0.4 + 0.5 + 0.5 of waiting, spent polling (serving the group protocol)
        assert clock.t - t0 == pytest.approx(1.7)
        assert all(t <= 0.1 + 1e-9 for t in consumer.polled)
        assert [[(tp.topic, tp.partition) for tp in tps] for tps in consumer.paused] == [[("f", 0), ("f", 1)]]
        assert len(consumer.resumed) == 1
        assert consumer.seeks == [("f", 1, 40)]  # the earliest offset that slipped through
    finally:
        scorer.close(timeout_s=1)


def test_no_pause_when_triton_answers(plan):
    clock = Clock()
    consumer = FakeConsumer(clock)
    scorer = scorer_with(plan, consumer, FlakyTriton(failures=0), clock)
    try:
        scorer._infer_retrying({"x": np.zeros(1)}, 1, BatchStats())
        assert consumer.paused == [] and consumer.resumed == [] and clock.t == 1000.0
    finally:
        scorer.close(timeout_s=1)


def test_paused_partitions_stop_waiting_when_the_scorer_stops():
    clock = Clock()
    consumer = FakeConsumer(clock)
    stop = threading.Event()
    paused = PausedPartitions(consumer, stop.is_set, clock)
    stop.set()
    paused.wait(10.0)
    assert clock.t == 1000.0 and consumer.polled == []
    assert paused.resume() and not paused.resume()  # resumed once


# ----- transactions -------------------------------------------------------------------------------

class FakeProducer:
    def __init__(self, fail_init: int = 0):
        self.fail_init = fail_init
        self.log: list = []

    def init_transactions(self, timeout):
        self.log.append("init")
        if self.fail_init:
            self.fail_init -= 1
            raise retriable()

    def begin_transaction(self):
        self.log.append("begin")

    def send_offsets_to_transaction(self, tps, metadata, timeout):
        self.log.append(("offsets", sorted((tp.topic, tp.partition, tp.offset) for tp in tps), metadata))

    def commit_transaction(self, timeout):
        self.log.append("commit")

    def abort_transaction(self, timeout):
        self.log.append("abort")


def transactions(producer, clock, **kw):
    done: list = []
    txns = Transactions(producer, FakeConsumer(clock), metrics=ScorerMetrics(), on_committed=done.append,
                        on_aborted=lambda b: done.append(("aborted", b)), clock=clock, sleep=clock.sleep, **kw)
    return txns, done


def test_init_is_resumed_while_retriable_then_gives_up_after_its_budget():
    clock = Clock()
    txns, _ = transactions(FakeProducer(fail_init=3), clock)
    txns.init(budget_s=10.0)
    assert txns.producer.log == ["init"] * 4 and clock.slept == [0.5] * 3
    clock2 = Clock()
    txns2, _ = transactions(FakeProducer(fail_init=100), clock2)
    with pytest.raises(KafkaException):
        txns2.init(budget_s=2.0)
    assert clock2.t - 1000.0 <= 2.5
    txns.abandon()
    txns2.abandon()


def test_a_batch_commits_with_its_offsets_on_the_worker():
    clock = Clock()
    txns, done = transactions(FakeProducer(), clock)
    produced = []
    assert txns.produce_batch([Msg("f", 0, 5), Msg("f", 0, 6), Msg("f", 1, 9)], lambda: produced.append(1), "b1")
    assert produced == [1] and txns.committing is not None  # commit_interval 0: commits at once
    txns.flush()
    assert done == ["b1"] and txns.idle
    assert txns.producer.log == ["begin", ("offsets", [("f", 0, 7), ("f", 1, 10)], "group-metadata"), "commit"]
    txns.abandon()


def test_batches_share_a_transaction_until_the_commit_interval_is_due():
    clock = Clock()
    txns, done = transactions(FakeProducer(), clock, commit_interval_s=0.05)
    txns.produce_batch([Msg("f", 0, 1)], lambda: None, "b1")
    clock.t += 0.02
    txns.produce_batch([Msg("f", 0, 2)], lambda: None, "b2")
    assert txns.committing is None and txns.open_began() == 1000.0
    txns.advance(idle=False)
    assert txns.committing is None  # not due yet
    clock.t += 0.04
    txns.advance(idle=False)
    txns.flush()
    assert done == ["b1", "b2"] and txns.producer.log.count("begin") == 1
    txns.abandon()


def test_commit_cadence_is_quick_when_quiet_and_rises_with_the_rate_to_its_maximum():
    clock = Clock()
    cadence = CommitCadence(0.0, max_interval_s=0.08, busy_rate=1000.0, window_s=1.0, clock=clock)
    assert cadence.interval() == 0.0  # nothing seen: commit at once
    for _ in range(300):  # 500 events/s for 6 s: the decayed count settles near the rate
        clock.t += 0.02
        cadence.observe(10)
    assert cadence.rate() == pytest.approx(500, rel=0.03)
    assert cadence.interval() == pytest.approx(0.04, rel=0.03)  # half the busy rate: half the maximum
    for _ in range(100):  # 3,000 events/s: capped at the maximum
        clock.t += 0.01
        cadence.observe(30)
    assert cadence.interval() == pytest.approx(0.08)
    clock.t += 8.0  # input stopped: back to a quick commit within a few windows
    assert cadence.rate() < 10 and cadence.interval() < 0.001
    assert CommitCadence(0.03, clock=clock).interval() == 0.03  # fixed: whatever the load
    assert CommitCadence(0.15, max_interval_s=0.05, clock=clock).interval() == 0.15  # never below the quiet one


def test_an_adaptive_cadence_puts_more_batches_in_a_transaction_when_busy():
    clock = Clock()

    def run(batch_size: int) -> int:
        """Transactions begun for 50 batches of ``batch_size`` arriving every 20 ms."""
        cadence = CommitCadence(0.0, max_interval_s=0.1, busy_rate=1000.0, clock=clock)
        txns, done = transactions(FakeProducer(), clock, cadence=cadence)
        offset = 0
        for _ in range(50):
            msgs = [Msg("f", 0, offset + k) for k in range(batch_size)]
            offset += batch_size
            txns.produce_batch(msgs, lambda: None, offset)
            clock.t += 0.02
            txns.advance(idle=False)
        txns.flush()
        assert len(done) == 50 and txns.idle  # every batch committed, none lost
        begun = txns.producer.log.count("begin")
        txns.abandon()
        return begun

    quiet, busy = run(1), run(40)  # 50 vs 2,000 events/s
    assert quiet >= 45  # about a transaction per batch
    assert busy <= 15  # ~0.1 s of batches per transaction once the rate is seen


def test_pacing_shortens_the_wait_for_input_to_the_adaptive_commit_interval():
    clock = Clock()
    cadence = CommitCadence(0.0, max_interval_s=0.1, busy_rate=100.0, clock=clock)
    pacing = Pacing(max_batch=8, poll_timeout_s=0.2, cadence=cadence, clock=clock)
    assert pacing.poll_timeout(clock.t) == 0.0  # quiet: the open transaction is due at once
    cadence.observe(1000)
    assert pacing.poll_timeout(clock.t - 0.03) == pytest.approx(0.07)


def test_a_failed_produce_aborts_and_rewinds_to_the_first_offsets():
    clock = Clock()
    txns, done = transactions(FakeProducer(), clock, commit_interval_s=10.0)
    txns.produce_batch([Msg("f", 0, 3)], lambda: None, "b1")

    def fails():
        raise KafkaException(KafkaError(KafkaError._STATE, "abortable", txn_requires_abort=True))
    assert not txns.produce_batch([Msg("f", 0, 4), Msg("f", 1, 8)], fails, "b2")
    assert ("aborted", "b1") in done and txns.idle
    assert "abort" in txns.producer.log
    assert sorted(txns.consumer.seeks) == [("f", 0, 3), ("f", 1, 8)]
    txns.abandon()


class QueueingProducer:
    """An idempotent producer's surface: ``produce`` queues, ``flush`` delivers (or fails) them."""

    def __init__(self, fail: bool = False, stuck: bool = False):
        self.fail, self.stuck = fail, stuck
        self.queued: list = []
        self.delivered: list = []

    def produce(self, topic, key=None, value=None, on_delivery=None, **kw):
        self.queued.append((topic, value, on_delivery))

    def poll(self, timeout):
        return 0

    def flush(self, timeout):
        if self.stuck:
            return len(self.queued)
        for topic, value, cb in self.queued:
            cb(KafkaError(KafkaError._MSG_TIMED_OUT) if self.fail else None, Msg(topic, 0, 0))
            if not self.fail:
                self.delivered.append(value)
        self.queued = []
        return 0


class CommittingConsumer(FakeConsumer):
    def __init__(self, clock):
        super().__init__(clock)
        self.commits: list = []

    def commit(self, offsets, asynchronous):
        self.commits.append((sorted((tp.topic, tp.partition, tp.offset) for tp in offsets), asynchronous))


def test_at_least_once_commits_offsets_only_after_the_records_are_acknowledged():
    from scorer.kafka_txn import AtLeastOnce
    clock = Clock()
    consumer, done = CommittingConsumer(clock), []
    producer = QueueingProducer()
    txns = AtLeastOnce(producer, consumer, metrics=ScorerMetrics(), on_committed=done.append,
                       commit_interval_s=0.05, clock=clock)
    txns.init(1.0)  # nothing to initialise
    assert txns.produce_batch([Msg("f", 0, 4)], lambda: txns.producer.produce("scores", value=b"a"), "b1")
    assert producer.queued and not consumer.commits  # not due yet: nothing committed
    clock.t += 0.06
    txns.produce_batch([Msg("f", 1, 8)], lambda: txns.producer.produce("scores", value=b"b"), "b2")
    assert producer.delivered == [b"a", b"b"] and done == ["b1", "b2"]
    assert consumer.commits == [([("f", 0, 5), ("f", 1, 9)], True)]
    txns.produce_batch([Msg("f", 0, 5)], lambda: txns.producer.produce("scores", value=b"c"), "b3")
    txns.flush()  # stop / revocation: synchronously
    assert consumer.commits[-1] == ([("f", 0, 6)], False) and txns.idle


@pytest.mark.parametrize("producer", [QueueingProducer(fail=True), QueueingProducer(stuck=True)])
def test_at_least_once_commits_nothing_when_a_record_is_not_delivered(producer):
    from scorer.kafka_txn import AtLeastOnce
    clock = Clock()
    consumer = CommittingConsumer(clock)
    txns = AtLeastOnce(producer, consumer, metrics=ScorerMetrics(), on_committed=lambda b: None, clock=clock)
    with pytest.raises(FatalConsumerError, match="not delivered"):
        txns.produce_batch([Msg("f", 0, 4)], lambda: txns.producer.produce("scores", value=b"a"), "b1")
    assert consumer.commits == []  # new clients re-read from the last committed offset


# ----- rebuilding fatal clients -------------------------------------------------------------------

class StubScorer:
    """run() raises the fatal errors it is given, then returns; start() likewise."""

    def __init__(self, run_errors=(), start_errors=(), stop_after_close=False):
        self.run_errors, self.start_errors = list(run_errors), list(start_errors)
        self.metrics = ScorerMetrics()
        self.stats = object()
        self.closed = self.started = 0
        self.stopping = False
        self.stop_after_close = stop_after_close

    def run(self, idle_exit_s=None):
        if self.run_errors:
            raise self.run_errors.pop(0)
        return self.stats

    def start(self):
        self.started += 1
        if self.start_errors:
            raise self.start_errors.pop(0)

    def close(self, timeout_s=10.0):
        self.closed += 1
        self.stopping = self.stop_after_close


def test_fatal_clients_are_rebuilt_with_backoff_and_the_stats_carry_over():
    from scorer.kafka_service import run_rebuilding
    first = StubScorer(run_errors=[FatalConsumerError("fenced")])
    built = [StubScorer(start_errors=[FatalConsumerError("broker still down")]), StubScorer()]
    clock = Clock()
    seen = []
    stats, rebuilds = run_rebuilding(first, lambda: built.pop(0), on_new=seen.append, sleep=clock.sleep)
    assert rebuilds == 2 and clock.slept == [0.2, 0.4]  # the second rebuild waits longer
    assert stats is first.stats and seen[1].stats is first.stats
    assert first.closed == 1 and seen[0].closed == 1 and seen[1].closed == 1  # the last one at the end


def test_a_stop_during_a_rebuild_ends_the_run_without_new_clients():
    from scorer.kafka_service import run_rebuilding
    first = StubScorer(run_errors=[FatalConsumerError("wedged")], stop_after_close=True)
    stats, rebuilds = run_rebuilding(first, lambda: pytest.fail("rebuilt after a stop"), sleep=Clock().sleep)
    assert rebuilds == 1 and stats is first.stats
