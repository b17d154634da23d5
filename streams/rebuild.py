"""Rebuild the window store from Kafka when it lost its data.

Kafka is the source of truth, the window store a derived cache. The store keeps a completeness
marker (:class:`rti_store.base.Completeness`); a store without one lost its data (a Redis
restart without persistence, a flush, a failover to an empty replica) or was never filled. The
scorer flags every score read from a store that is not complete (``windows_rebuilding``).

Each ingest member, every ``check_interval_s`` and right after an assignment:

1. reads the marker; if it is missing, claims a rebuild: one atomic call lists *every* partition
   of the subscribed topics as pending, replayed from ``now - lookback`` (the longest look-back
   any hop needs). Listing all partitions, not only this member's, keeps the store flagged until
   every owner has replayed its share;
2. for each pending partition it owns and is not yet replaying in this generation: seeks it to
   the first offset at or after ``now - lookback`` (Kafka's time index) and notes the high
   watermark as the target. Appends are idempotent, so records already in the store are no-ops;
3. when a batch consumed *after* that seek is acknowledged by the store with a next offset at or
   past the target, the partition is finished in the marker. The last one makes it complete.

History that never went through Kafka (``ingest.backfill_sources``: files written into the
windows by backfill) is part of the claim too, as the pending step ``backfill``: every member
that sees it pending reloads the files (idempotent appends) in a background thread and clears
the step, so the store is not complete before the backfilled history is back.

A member that crashes mid-rebuild leaves its partitions pending: whoever owns them next replays
them. A second loss during a rebuild is a new generation (epoch), which the old one cannot finish.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from confluent_kafka import KafkaException, TopicPartition

from rti_store.base import Completeness

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


@dataclass
class PartitionReplay:
    epoch: str
    start: int  # first offset replayed
    target: int  # high watermark when the replay started: done once consumed up to here
    after_batch: int  # only batches submitted after the seek count


class StateRebuild:
    """The rebuild protocol of one ingest member (see the module docstring).

    ``consumer`` is the member's confluent ``Consumer``; ``store`` a window store with the marker
    calls; the clocks are injected for tests.
    """

    def __init__(self, consumer: Any, store: Any, topics: Iterable[str], lookback_ns: int, *,
                 metrics: Any = None, check_interval_s: float = 1.0, kafka_timeout_s: float = 10.0,
                 wall_clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 new_epoch: Callable[[], str] = lambda: uuid.uuid4().hex,
                 backfill: Callable[[], Any] | None = None):
        self.consumer = consumer
        self.store = store
        self.topics = sorted(set(topics))
        self.lookback_ns = int(lookback_ns)
        self.metrics = metrics
        self.check_interval_s = check_interval_s
        self.kafka_timeout_s = kafka_timeout_s
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._new_epoch = new_epoch
        self._next_check = 0.0
        self.backfill = backfill  # reloads the history that is not in Kafka (None: there is none)
        self.backfill_thread: threading.Thread | None = None
        self._backfill_epoch: str | None = None
        self.replaying: dict[TopicPartitionKey, PartitionReplay] = {}

    # ----------------------------------------------------------------- when to look
    def due(self, now: float) -> bool:
        return now >= self._next_check

    def check_soon(self) -> None:
        """After an assignment: look at the marker on the next loop turn."""
        self._next_check = 0.0

    def forget(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """Revoked or lost partitions: their next owner replays them (they stay pending)."""
        for tp in partitions:
            self.replaying.pop(tp, None)

    # ----------------------------------------------------------------- the protocol
    def check(self, assigned: set[TopicPartitionKey], batch_seq: int) -> list[TopicPartitionKey]:
        """Read the marker, claim a rebuild if the state is lost, start replaying the pending
        partitions this member owns. Returns the partitions whose replay started now. The caller
        has completed every batch in flight (so no batch from before a seek is pending)."""
        self._next_check = self._monotonic() + self.check_interval_s
        marker = self.store.marker()
        if marker.completeness is Completeness.LOST:
            from_ms = int(self._wall_clock() * 1000) - self.lookback_ns // 1_000_000
            partitions = self._all_partitions()
            steps = ("backfill",) if self.backfill is not None else ()
            marker = self.store.claim_rebuild(partitions, from_ms, self._new_epoch(), steps=steps)
            log.warning("window store has no completeness marker (data lost, or never filled): rebuilding "
                        "%d partition(s) from Kafka, events from %s on (generation %s)", len(partitions),
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(from_ms / 1000)), marker.epoch)
        started = []
        for tp, from_ms in sorted(marker.pending.items()):
            current = self.replaying.get(tp)
            if tp not in assigned or (current is not None and current.epoch == marker.epoch):
                continue
            replay = self._start(tp, from_ms, marker.epoch, batch_seq)
            if replay is not None:
                started.append(tp)
        if "backfill" in marker.steps and self.backfill is not None and self._backfill_epoch != marker.epoch:
            self._start_backfill(marker.epoch)
        # a generation that ended (or was replaced) is no longer ours to finish
        for tp in [tp for tp, r in self.replaying.items() if r.epoch != marker.epoch or tp not in marker.pending]:
            del self.replaying[tp]
        self._publish(marker)
        return started

    def on_batch_acknowledged(self, next_offsets: dict[TopicPartitionKey, int], batch_seq: int) -> None:
        """A batch is in the store: finish the partitions it carried up to their target."""
        for tp, nxt in next_offsets.items():
            replay = self.replaying.get(tp)
            if replay is None or batch_seq <= replay.after_batch:
                continue
            if self.metrics is not None:
                self.metrics.set_rebuild_remaining(*tp, max(0, replay.target - nxt))
            if nxt >= replay.target:
                self._finish(tp, replay)

    # ----------------------------------------------------------------- parts
    def _all_partitions(self) -> list[TopicPartitionKey]:
        md = self.consumer.list_topics(timeout=self.kafka_timeout_s)
        out = []
        for topic in self.topics:
            meta = md.topics.get(topic)
            if meta is None or meta.error is not None:
                raise KafkaException(f"no metadata for topic {topic!r}: {getattr(meta, 'error', 'unknown topic')}")
            out += [(topic, p) for p in sorted(meta.partitions)]
        return out

    def _start(self, tp: TopicPartitionKey, from_ms: int, epoch: str, batch_seq: int) -> PartitionReplay | None:
        topic, partition = tp
        try:
            _lo, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                            timeout=self.kafka_timeout_s)
            found = self.consumer.offsets_for_times([TopicPartition(topic, partition, from_ms)],
                                                    timeout=self.kafka_timeout_s)[0]
            start = found.offset if found.offset >= 0 else high  # -1: nothing that recent
            self.consumer.seek(TopicPartition(topic, partition, start))
        except KafkaException as exc:  # e.g. the partition is not being fetched yet: next check
            log.info("rebuild of %s[%d] not started yet: %s", topic, partition, exc)
            return None
        replay = PartitionReplay(epoch, start, high, batch_seq)
        self.replaying[tp] = replay
        log.warning("rebuilding %s[%d]: replaying offsets %d..%d (%d records)", topic, partition, start, high,
                    high - start)
        if self.metrics is not None:
            self.metrics.set_rebuild_remaining(topic, partition, max(0, high - start))
        if start >= high:
            self._finish(tp, replay)
        return replay

    def _start_backfill(self, epoch: str) -> None:
        """Reload the backfill sources off the loop's thread (a large file must not stall
        consumption past the group's poll interval), then clear the step."""
        self._backfill_epoch = epoch

        def run() -> None:
            try:
                log.warning("rebuild: reloading the backfilled history (generation %s)", epoch)
                self.backfill()
                self.store.finish_step("backfill", epoch)
                log.warning("rebuild: backfilled history reloaded (generation %s)", epoch)
                self.check_soon()
            except Exception as exc:  # noqa: BLE001 - the step stays pending; retried at the next check
                log.error("rebuild: reloading the backfilled history failed (retried): %s", exc)
                self._backfill_epoch = None

        self.backfill_thread = threading.Thread(target=run, name="relstream-rebuild-backfill", daemon=True)
        self.backfill_thread.start()

    def _finish(self, tp: TopicPartitionKey, replay: PartitionReplay) -> None:
        self.store.finish_rebuild(tp[0], tp[1], replay.epoch)
        self.replaying.pop(tp, None)
        if self.metrics is not None:
            self.metrics.set_rebuild_remaining(*tp, 0)
        log.warning("rebuilt %s[%d] (%d records replayed)", tp[0], tp[1], replay.target - replay.start)
        self.check_soon()  # publish the new completeness (complete once the last one finished)

    def _publish(self, marker) -> None:
        if self.metrics is not None:
            self.metrics.set_store_completeness(marker.completeness.value)
