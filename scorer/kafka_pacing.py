"""The time-driven policies of the Kafka scorer's loop, each with an injected clock.

- :class:`Pacing`: when the next batch may start and how long to wait for input;
- :class:`CommitCadence`: how long an open transaction may stay open, by load;
- :class:`Watchdog`: after a quiet spell, is a broker still reachable and are partitions assigned;
- :class:`PausedPartitions`: while Triton is down, the partitions are paused, the group protocol
  is served, and whatever slipped through is re-read afterwards.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

from confluent_kafka import KafkaException, TopicPartition

from kafka_io.bounded import FatalConsumerError
from kafka_io.polling import consume_ready

log = logging.getLogger(__name__)


class CommitCadence:
    """How long an open transaction may stay open before it is committed: ``interval_s`` when the
    input is quiet, rising linearly with the arrival rate to ``max_interval_s`` at ``busy_rate``
    events/s and above (``max_interval_s`` None: always ``interval_s``; below ``interval_s``: raised
    to it).

    A transaction's broker work (offsets, markers, the commit round trips) is paid per transaction,
    not per event: when busy, more events per transaction take that work off the cores the scorer
    and Triton need, for a bounded wait; when quiet there is CPU to spare and a fast commit costs
    nothing. The rate is an exponentially decayed count of the events seen in the last
    ``window_s`` (so it falls back to quiet within a few windows after the input stops)."""

    def __init__(self, interval_s: float = 0.0, *, max_interval_s: float | None = None, busy_rate: float = 1000.0,
                 window_s: float = 0.5, clock: Callable[[], float] = time.monotonic):
        if max_interval_s is not None:  # never below the quiet interval (a fixed one set alone wins)
            max_interval_s = max(max_interval_s, interval_s)
        if busy_rate <= 0 or window_s <= 0:
            raise ValueError("commit_busy_rate and the rate window must be > 0")
        self.interval_s, self.max_interval_s, self.busy_rate = interval_s, max_interval_s, busy_rate
        self.window_s, self.clock = window_s, clock
        self._count, self._at = 0.0, clock()

    @property
    def adaptive(self) -> bool:
        return self.max_interval_s is not None

    def observe(self, events: int) -> None:
        """``events`` more were taken into a transaction now."""
        self._count = self._decayed() + events

    def _decayed(self) -> float:
        now = self.clock()
        count = self._count * math.exp(-max(0.0, now - self._at) / self.window_s)
        self._at = now
        return count

    def rate(self) -> float:
        """Events per second, over about the last ``window_s``."""
        self._count = self._decayed()
        return self._count / self.window_s

    def interval(self) -> float:
        """How long the open transaction may stay open now."""
        if self.max_interval_s is None:
            return self.interval_s
        load = min(1.0, self.rate() / self.busy_rate)
        return self.interval_s + (self.max_interval_s - self.interval_s) * load


class Pacing:
    """Batches start at most every ``batch_interval_s`` (what arrives meanwhile joins the batch;
    a full ``max_batch`` goes at once): each batch costs a Triton call and a transaction, whose
    broker work per event shrinks as batches grow. After an idle spell the first event is taken
    without waiting. An open transaction that waits for its commit interval (``cadence``, or a
    fixed ``commit_interval_s``) shortens the wait for input, so it is committed on time."""

    def __init__(self, *, max_batch: int, batch_interval_s: float = 0.0, poll_timeout_s: float = 0.005,
                 commit_interval_s: float = 0.0, cadence: CommitCadence | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.max_batch, self.batch_interval_s, self.poll_timeout_s = max_batch, batch_interval_s, poll_timeout_s
        self.cadence = cadence or CommitCadence(commit_interval_s, clock=clock)
        self.clock = clock
        self.batch_started = float("-inf")

    def fill_wait(self) -> float:
        """How long the next batch may still fill (0: it may go now)."""
        return max(0.0, self.batch_started + self.batch_interval_s - self.clock())

    def poll_timeout(self, open_txn_began: float | None) -> float:
        """How long to wait for a first message when none is there; ``open_txn_began``: when the
        open transaction began, if one waits for its commit interval."""
        if open_txn_began is not None:
            return max(0.0, min(self.poll_timeout_s, open_txn_began + self.cadence.interval() - self.clock()))
        return self.poll_timeout_s

    def next_batch(self, consumer: Any, open_txn_began: float | None = None) -> list:
        """The next batch from ``consumer`` (``consume(n, timeout)`` waits until it has ``n``
        messages or the timeout has passed, which is what the pacing relies on)."""
        msgs = consumer.consume(num_messages=self.max_batch, timeout=self.fill_wait())
        if not msgs:
            timeout = self.poll_timeout(open_txn_began)
            if timeout <= 0:
                return msgs
            msgs = consume_ready(consumer, self.max_batch, timeout)
        if msgs:
            self.batch_started = self.clock()
        return msgs


class Watchdog:
    """After ``quiet_s`` without input: does a broker answer a metadata request, and does this
    member have partitions? librdkafka 2.16 can lose every broker for good across a broker restart
    (#5301, with metadata.recovery.strategy=none) or keep a dead group coordinator (#5511, with the
    default re-bootstrap) without raising anything: new clients are the way out, so a broker
    unreachable for ``quiet_s`` more, or no partitions for ``2 * quiet_s``, raises
    FatalConsumerError. ``quiet_s <= 0``: off."""

    def __init__(self, quiet_s: float, clock: Callable[[], float] = time.monotonic):
        self.quiet_s, self.clock = quiet_s, clock
        self.last_input = clock()
        self.next_check = 0.0
        self.unreachable_since: float | None = None
        self.unassigned_since: float | None = None

    def input_seen(self) -> None:
        self.last_input = self.clock()

    def check(self, probe: Callable[[], Any], assigned: Callable[[], bool]) -> None:
        """``probe()``: a metadata request (raises KafkaException when no broker answers);
        ``assigned()``: whether this member has partitions."""
        now = self.clock()
        if self.quiet_s <= 0 or now - self.last_input < self.quiet_s or now < self.next_check:
            return
        self.next_check = now + min(10.0, self.quiet_s / 3)
        try:
            probe()
            self.unreachable_since = None
        except KafkaException as exc:
            self.unreachable_since = self.unreachable_since or now
            log.warning("no broker answers a metadata request: %s", exc)
            if now - self.unreachable_since >= self.quiet_s:
                raise FatalConsumerError(f"no broker reachable for {now - self.unreachable_since:.0f} s") from exc
        if assigned():
            self.unassigned_since = None
            return
        # (an instance with more peers than partitions legitimately has none: it just rejoins now and then)
        self.unassigned_since = self.unassigned_since or now
        if now - self.unassigned_since >= 2 * self.quiet_s:
            raise FatalConsumerError(f"no partitions assigned for {now - self.unassigned_since:.0f} s")


class PausedPartitions:
    """Pauses the consumer's partitions on the first :meth:`wait` and resumes them on
    :meth:`resume`; meanwhile ``poll()`` serves the group protocol, and a message that still slips
    through is remembered and re-read (the consumer is sought back to it) on resume."""

    def __init__(self, consumer: Any, stopped: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic):
        self.consumer, self.stopped, self.clock = consumer, stopped, clock
        self.paused: list | None = None
        self.slipped: dict[tuple[str, int], int] = {}

    def wait(self, seconds: float) -> None:
        """Pause (once) and wait ``seconds`` while polling, or until stopped."""
        if self.paused is None:
            self.paused = list(self.consumer.assignment())
            self.consumer.pause(self.paused)
        deadline = self.clock() + seconds
        while self.clock() < deadline and not self.stopped():
            msg = self.consumer.poll(min(0.1, max(0.0, deadline - self.clock())))
            if msg is not None and msg.error() is None:
                key = (msg.topic(), msg.partition())
                self.slipped[key] = min(self.slipped.get(key, msg.offset()), msg.offset())

    def resume(self) -> bool:
        """Re-read what slipped through and resume; False when nothing was paused."""
        if self.paused is None:
            return False
        for (topic, part), offset in self.slipped.items():
            self.consumer.seek(TopicPartition(topic, part, offset))
        self.consumer.resume(self.paused)
        self.paused, self.slipped = None, {}
        return True
