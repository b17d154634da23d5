"""Helpers shared by the ingestion integration tests (imported through the conftest fixtures)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Sequence

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from rti_store import MemoryWindowStore
from schemas.interactions import interactions_of
from streams.ingest import IngestService, IngestSettings, open_codec
from kafka_io.retry import Backoff

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def single_pass(plan, codec, values: Iterable[bytes], table: str = "transactions") -> MemoryWindowStore:
    """The reference: every good record's appends, once, through the in-memory store."""
    store = MemoryWindowStore(plan)
    items = []
    for value in values:
        _subject, record = codec.decode(value)
        items.extend(interactions_of(plan, table, record))
    store.append(items)
    return store


def assert_same_windows(expected: MemoryWindowStore, redis_store, redis_client) -> int:
    """Every window equal row for row (event time, event id, values), and no extra windows."""
    keys = sorted(expected.keys(), key=repr)
    assert keys, "the reference has no windows: the test produced nothing"
    diffs = []
    for hop, entity in keys:
        want, got = expected.rows(hop, entity), redis_store.rows(hop, entity)
        if want != got:
            diffs.append((hop.split("->")[0], entity, len(want), len(got)))
    assert not diffs, f"{len(diffs)} of {len(keys)} windows differ, e.g. (hop, entity, want, got) {diffs[:5]}"
    stored = sum(1 for _ in redis_store.iter_keys())
    assert stored == len(keys), f"Redis holds {stored} windows, the single pass {len(keys)}"
    return len(keys)


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe-ends"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        c.close()


class GroupProbe:
    """Reads a group's committed offsets without joining it."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int):
        self.topic, self.partitions = topic, partitions
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})

    def committed(self) -> dict[int, int]:
        deadline = time.monotonic() + 30
        while True:
            try:
                tps = self._c.committed([TopicPartition(self.topic, p) for p in range(self.partitions)], timeout=10)
                return {tp.partition: max(tp.offset, 0) for tp in tps}
            except KafkaException as exc:  # coordinator still loading / moving: ask again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def total(self) -> int:
        return sum(self.committed().values())

    def wait_for(self, want: dict[int, int], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        got = {}
        while time.monotonic() < deadline:
            got = self.committed()
            if got == want:
                return
            time.sleep(0.2)
        raise AssertionError(f"group did not commit {want} within {timeout}s; committed {got}")

    def close(self) -> None:
        self._c.close()


def make_service(plan, bootstrap: str, registry_dir, store, topic: str, dlq_topic: str, group: str,
                 batch_size: int = 500, max_payload_bytes: int = 4096, metrics_port: int | None = None,
                 now_ns: Callable[[], int] | None = None, backoff: Backoff = Backoff(0.05, 0.5)) -> IngestService:
    codec, errors = open_codec(registry_dir, max_payload_bytes)
    settings = IngestSettings(topics={topic: "transactions"}, dlq_topic=dlq_topic, group_id=group,
                              batch_size=batch_size, batch_timeout_s=0.05, max_payload_bytes=max_payload_bytes,
                              shutdown_grace_s=2.0, metrics_port=metrics_port, backoff=backoff)
    return IngestService(plan, settings, {"bootstrap.servers": bootstrap}, store, codec, errors,
                         consumer_extra=FAST_GROUP, now_ns=now_ns)


class Running:
    """An IngestService running in a thread until :meth:`stop`."""

    def __init__(self, service: IngestService):
        self.service = service
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run(install_signals=False)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self, timeout: float = 30.0):
        self.service.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "ingest loop did not stop"
        if self.error is not None:
            raise self.error
        return self.service.loop.stats


def encode_all(codec, subject: str, records: Sequence[dict[str, Any]]) -> list[bytes]:
    return [codec.encode(subject, r) for r in records]
