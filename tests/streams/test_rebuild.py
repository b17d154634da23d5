"""The rebuild protocol (streams.rebuild) in-process: the real in-memory window store and its
marker, a consumer stand-in that answers metadata, watermarks and the time index the way
librdkafka does, and injected clocks. The same protocol against real Kafka and Redis:
tests/e2e/test_faults.py::test_redis_restarted_empty_is_flagged_and_rebuilt_from_kafka."""
from __future__ import annotations

from types import SimpleNamespace

from rti_store import Completeness, MemoryWindowStore
from schemas.plan_loading import builtin_plan
from streams.rebuild import StateRebuild

DAY_MS = 86_400_000
NOW_S = 1_800_000_000.0


class PartitionLog:
    """Offsets and record timestamps of the partitions of one topic, as a broker would have them."""

    def __init__(self, topic: str, timestamps_ms: dict[int, list[int]]):
        self.topic = topic
        self.timestamps_ms = timestamps_ms
        self.seeks: list[tuple[str, int, int]] = []

    def list_topics(self, timeout=None):
        parts = {p: None for p in self.timestamps_ms}
        return SimpleNamespace(topics={self.topic: SimpleNamespace(partitions=parts, error=None)})

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return 0, len(self.timestamps_ms[tp.partition])

    def offsets_for_times(self, tps, timeout=None):
        out = []
        for tp in tps:
            ts = self.timestamps_ms[tp.partition]
            first = next((i for i, t in enumerate(ts) if t >= tp.offset), -1)
            out.append(SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=first))
        return out

    def seek(self, tp):
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def member(store, log, clock=lambda: NOW_S, epochs=None):
    plan = builtin_plan("fraud")
    epochs = epochs or iter(["g1", "g2", "g3"])
    return StateRebuild(log, store, [log.topic], plan.real_time_offset.ns, check_interval_s=1.0,
                        wall_clock=clock, monotonic=lambda: 0.0, new_epoch=lambda: next(epochs))


def now_ms(days_ago: float) -> int:
    return int(NOW_S * 1000 - days_ago * DAY_MS)


def test_a_lost_store_is_claimed_for_every_partition_and_replayed_by_their_owners():
    store = MemoryWindowStore(builtin_plan("fraud"))
    # partition 0: 10 days of history (the first 3 records older than the 7-day look-back); 1: empty
    log = PartitionLog("tx", {0: [now_ms(d) for d in (10, 9, 8, 6, 5, 1)], 1: [], 2: [now_ms(2)]})
    a = member(store, log)
    started = a.check(assigned={("tx", 0), ("tx", 1)}, batch_seq=4)
    marker = store.marker()
    # every partition is listed, also the one nobody here owns; the empty one is done at once
    assert marker.completeness is Completeness.REBUILDING and set(marker.pending) == {("tx", 0), ("tx", 2)}
    assert all(v == now_ms(7) for v in marker.pending.values())
    assert started == [("tx", 0), ("tx", 1)] and ("tx", 0, 3) in log.seeks  # from the 4th record: 6 days ago
    # a batch from before the seek (sequence 4) proves nothing, one after it does
    a.on_batch_acknowledged({("tx", 0): 6}, batch_seq=4)
    assert ("tx", 0) in store.marker().pending
    a.on_batch_acknowledged({("tx", 0): 5}, batch_seq=5)  # not yet at the high watermark (6)
    assert ("tx", 0) in store.marker().pending
    a.on_batch_acknowledged({("tx", 0): 6}, batch_seq=6)
    assert store.marker().pending == {("tx", 2): now_ms(7)}
    # the owner of partition 2 joins later: it sees the claim and replays its share
    b = member(store, log, epochs=iter(["never used"]))
    assert b.check(assigned={("tx", 2)}, batch_seq=0) == [("tx", 2)] and ("tx", 2, 0) in log.seeks
    b.on_batch_acknowledged({("tx", 2): 1}, batch_seq=1)
    assert store.marker().completeness is Completeness.COMPLETE and store.marker().epoch == "g1"


def test_a_second_loss_mid_rebuild_starts_a_new_generation():
    store = MemoryWindowStore(builtin_plan("fraud"))
    log = PartitionLog("tx", {0: [now_ms(1)] * 5})
    a = member(store, log)
    a.check(assigned={("tx", 0)}, batch_seq=0)
    assert a.replaying[("tx", 0)].epoch == "g1"
    store.forget_everything()  # lost again before the replay finished
    a.check(assigned={("tx", 0)}, batch_seq=2)
    assert store.marker().epoch == "g2" and a.replaying[("tx", 0)].epoch == "g2"
    assert store.finish_rebuild("tx", 0, "g1") is False  # the old generation cannot clear it
    a.on_batch_acknowledged({("tx", 0): 5}, batch_seq=3)
    assert store.marker().completeness is Completeness.COMPLETE


def test_revoked_partitions_are_left_pending_for_their_next_owner():
    store = MemoryWindowStore(builtin_plan("fraud"))
    log = PartitionLog("tx", {0: [now_ms(1)] * 3, 1: [now_ms(1)] * 3})
    a = member(store, log)
    a.check(assigned={("tx", 0), ("tx", 1)}, batch_seq=0)
    assert a.due(0.0) is False  # checks are paced by the injected clock
    a.forget([("tx", 1)])
    a.on_batch_acknowledged({("tx", 0): 3, ("tx", 1): 3}, batch_seq=1)
    assert set(store.marker().pending) == {("tx", 1)}  # a batch of a revoked partition does not count
    assert a.due(0.0) is True  # a finished partition: look again soon (publish the new state)


def test_a_complete_store_is_left_alone():
    store = MemoryWindowStore(builtin_plan("fraud"))
    store.mark_complete("g0")
    log = PartitionLog("tx", {0: [now_ms(1)] * 3})
    a = member(store, log)
    assert a.check(assigned={("tx", 0)}, batch_seq=0) == [] and log.seeks == []
    assert store.marker().epoch == "g0"


def test_backfilled_history_is_reloaded_before_the_store_reads_complete():
    store = MemoryWindowStore(builtin_plan("fraud"))
    log = PartitionLog("tx", {0: []})
    calls = []

    def reload_history():
        calls.append(store.marker().completeness)
        if len(calls) == 1:
            raise OSError("history file unreadable")  # first try fails: the step stays pending

    plan = builtin_plan("fraud")
    a = StateRebuild(log, store, ["tx"], plan.real_time_offset.ns, wall_clock=lambda: NOW_S,
                     monotonic=lambda: 0.0, new_epoch=lambda: "g1", backfill=reload_history)
    a.check(assigned={("tx", 0)}, batch_seq=0)  # the empty partition is done at once
    a.backfill_thread.join(5)
    marker = store.marker()
    assert marker.steps == {"backfill"} and marker.completeness is Completeness.REBUILDING
    a.check(assigned={("tx", 0)}, batch_seq=0)  # retried at the next check
    a.backfill_thread.join(5)
    assert calls == [Completeness.REBUILDING, Completeness.REBUILDING]
    assert store.marker().completeness is Completeness.COMPLETE
