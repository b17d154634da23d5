"""Events on Kafka for the demo and the end-to-end tests: topics, a paced producer of transactions, the
collector of scores, reading a topic, consumer-group lag and membership."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from kafka_io.polling import consume_ready
from relstream.config import KAFKA_CLIENT_DEFAULTS
from schemas.registry import AvroCodec, FileSchemaRegistry, load_builtin_schemas

from .tools import TX_FIELDS, TX_SUBJECT


def open_codec(registry_dir: str | Path):
    """The Avro codec (Confluent wire format) over the file registry the services use."""

    registry = FileSchemaRegistry(registry_dir)
    load_builtin_schemas(registry)
    return AvroCodec(registry)


def transaction_records(frame) -> list[dict]:
    """Plan-shaped transaction dicts (the Avro `Transaction` record) from a normalised frame."""
    cols = {c: frame[c].to_numpy() for c in TX_FIELDS}
    out = []
    for i in range(len(frame)):
        out.append({"transaction_id": int(cols["transaction_id"][i]), "tx_datetime": int(cols["tx_datetime"][i]),
                    "customer_id": int(cols["customer_id"][i]), "terminal_id": int(cols["terminal_id"][i]),
                    # the wire carries float32: keep exactly what the services will see
                    "tx_amount": float(np.float32(cols["tx_amount"][i]))})
    return out


def label_records(frame, known_times: bool = True) -> list[dict]:
    """Label events (the Avro `TransactionLabel` record) of a label-table frame
    (``offline.distillation.replay.label_rows``): with its known times, or without them
    (``known_times=False``: null, the plan's delay applies when ingested)."""
    out = []
    for r in frame.to_dict("records"):
        out.append({"transaction_id": int(r["transaction_id"]), "tx_datetime": int(r["tx_datetime"]),
                    "customer_id": int(r["customer_id"]), "terminal_id": int(r["terminal_id"]),
                    "tx_fraud": int(r["tx_fraud"]),
                    "label_known_at": int(r["label_known_at"]) if known_times else None})
    return out


def admin_client(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1, timeout_s: float = 30.0) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = admin_client(bootstrap)
    names = list(names)
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
                                  operation_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        if all(n in md.topics and md.topics[n].error is None and md.topics[n].partitions
               and all(p.leader >= 0 for p in md.topics[n].partitions.values()) for n in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {names} not ready after {timeout_s}s")


class RateProducer:
    """Open-loop producer: event i is handed to Kafka at t0 + i / rate (no coordinated omission)."""

    def __init__(self, bootstrap: str, codec: Any, extra: Mapping[str, Any] | None = None):
        from confluent_kafka import Producer

        self.codec = codec
        # librdkafka's default re-bootstrap here (not KAFKA_CLIENT_DEFAULTS): a plain producer needs
        # no group coordinator (librdkafka #5511), and with "none" a broker restart can leave it
        # without any broker for good (#5301: a 0-broker metadata answer while the broker starts)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 1, **dict(extra or {})})
        self.errors: list[str] = []

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.errors.append(str(err))

    def produce_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.01)
        self.producer.poll(0)

    def produce(self, topic: str, records: Sequence[Mapping[str, Any]], rate: float | None = None,
                subject: str = TX_SUBJECT, key_field: str | None = "customer_id",
                clock: Callable[[], int] = time.time_ns, stop: threading.Event | None = None,
                on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Produce records (Avro); returns the wall-clock ns at which each was produced."""
        values = [self.codec.encode(subject, dict(r)) for r in records]  # encode first: pacing stays exact
        keys = [str(r[key_field]).encode() if key_field else None for r in records]
        produced = np.full(len(records), -1, np.int64)
        start = time.perf_counter()
        for i, (value, key) in enumerate(zip(values, keys)):
            if stop is not None and stop.is_set():
                break
            if rate:
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            produced[i] = clock()
            self.produce_raw(topic, value, key)
            if on_progress is not None and i % 500 == 0:
                on_progress(i)
        return produced

    def flush(self, timeout_s: float = 60.0) -> None:
        left = self.producer.flush(timeout_s)
        if left:
            raise RuntimeError(f"{left} records not acknowledged by Kafka after {timeout_s}s")
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} produce errors, e.g. {self.errors[0]}")


@dataclass
class ScoreSeen:
    consumed_ns: int
    record: dict
    count: int = 1


class ScoreCollector(threading.Thread):
    """Consumes a scores topic (read_committed) in the background and indexes records by event id."""

    def __init__(self, bootstrap: str, topic: str, codec: Any, group: str | None = None,
                 clock: Callable[[], int] = time.time_ns):
        super().__init__(daemon=True, name=f"scores-{topic}")
        from confluent_kafka import Consumer

        self.topic = topic
        self.codec = codec
        self.clock = clock
        self.consumer = Consumer({"bootstrap.servers": bootstrap, **KAFKA_CLIENT_DEFAULTS,
                                  "group.id": group or f"e2e-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "isolation.level": "read_committed", "session.timeout.ms": 6000,
                                  "fetch.wait.max.ms": 10})
        self.seen: dict[str, ScoreSeen] = {}
        self.duplicates = 0  # records with an event id already seen at another offset
        self.rereads = 0
        self._offsets: set[tuple[int, int]] = set()
        self.undecodable = 0
        self.records = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._ready = threading.Event()

    def run(self) -> None:
        def assigned(consumer, partitions):
            self._ready.set()

        self.consumer.subscribe([self.topic], on_assign=assigned)
        try:
            while not self._halt.is_set():
                msgs = consume_ready(self.consumer, 500, 0.05)  # latency is measured: no batch-fill wait
                now = self.clock()
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    try:
                        _, rec = self.codec.decode(msg.value())
                    except Exception:  # noqa: BLE001 - counted; the test asserts it stays 0
                        self.undecodable += 1
                        continue
                    with self._lock:
                        # a re-read of the same offset (this consumer lost its position in a group
                        # rebalance, e.g. after a broker restart) is not a duplicate record
                        where = (msg.partition(), msg.offset())
                        if where in self._offsets:
                            self.rereads += 1
                            continue
                        self._offsets.add(where)
                        self.records += 1
                        eid = str(rec["event_id"])
                        if eid in self.seen:
                            self.seen[eid].count += 1
                            self.duplicates += 1
                        else:
                            self.seen[eid] = ScoreSeen(now, rec)
        finally:
            self.consumer.close()

    def wait_assigned(self, timeout_s: float = 30.0) -> None:
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"score collector on {self.topic} got no partition within {timeout_s}s")

    def count_of(self, ids: Iterable[str]) -> int:
        with self._lock:
            return sum(1 for i in ids if i in self.seen)

    def missing(self, ids: Iterable[str]) -> list[str]:
        with self._lock:
            return [i for i in ids if i not in self.seen]

    def wait_for(self, ids: Sequence[str], timeout_s: float, check: Callable[[], None] | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Wait until every id has a score; returns the ids still missing at the timeout."""
        ids = list(ids)
        deadline = time.monotonic() + timeout_s
        last_report = 0.0
        while True:
            missing = self.missing(ids)
            if not missing or time.monotonic() > deadline:
                return missing
            if check is not None:
                check()
            if on_progress is not None and time.monotonic() - last_report > 2:
                on_progress(len(ids) - len(missing), len(ids))
                last_report = time.monotonic()
            time.sleep(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0, isolation: str = "read_committed") -> list:
    """Every record of a topic from the beginning (until no new record for a short while)."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-read-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True})
    c.subscribe([topic])
    out, deadline, eof = [], time.monotonic() + timeout_s, set()
    parts = None
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if parts is None and c.assignment():
                parts = {p.partition for p in c.assignment()}
            if msg is None:
                if parts is not None and eof >= parts:
                    break
                continue
            if msg.error() is not None:
                if msg.error().code() == -191:  # _PARTITION_EOF
                    eof.add(msg.partition())
                continue
            eof.discard(msg.partition())
            out.append(msg)
    finally:
        c.close()
    return out


def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int | None:
    """Sum over the topics' partitions of (high watermark - committed offset); None if not known yet."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in topics for p in md.topics[t].partitions]
        try:
            committed = c.committed(tps, timeout=10)
        except KafkaException as exc:  # e.g. NOT_COORDINATOR while a fresh broker loads its groups
            if exc.args and getattr(exc.args[0], "retriable", lambda: False)() or "COORDINATOR" in str(exc):
                return None
            raise
        lag = 0
        for tp in committed:
            _lo, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            if tp.offset < 0:
                if hi > 0:
                    return None
                continue
            lag += max(0, hi - tp.offset)
        return lag
    finally:
        c.close()


def wait_caught_up(bootstrap: str, group: str, topics: Sequence[str], timeout_s: float,
                   check: Callable[[], None] | None = None) -> float:
    """Wait until the group committed everything in the topics; returns seconds waited."""
    t0 = time.monotonic()
    while True:
        lag = group_lag(bootstrap, group, topics)
        if lag == 0:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"group {group} still {lag} records behind on {list(topics)} after {timeout_s:.0f}s")
        if check is not None:
            check()
        time.sleep(0.2)


# ----- the offline reference (parity) --------------------------------------------------------------

def wait_group_members(bootstrap: str, groups: Sequence[str], timeout_s: float,
                       check: Callable[[], None] | None = None) -> None:
    """Wait until each consumer group is stable with at least one member (the service is consuming)."""
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout_s
    pending = list(groups)
    while pending:
        if check is not None:
            check()
        futures = admin.describe_consumer_groups(pending, request_timeout=5)
        still = []
        for g, fut in futures.items():
            try:
                desc = fut.result(timeout=10)
                ok = len(desc.members) > 0 and str(desc.state).upper().endswith("STABLE") and any(
                    m.assignment.topic_partitions for m in desc.members)
            except Exception:  # noqa: BLE001 - group unknown yet
                ok = False
            if not ok:
                still.append(g)
        pending = still
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"consumer group(s) {pending} have no assigned member after {timeout_s:.0f}s")
        if pending:
            time.sleep(0.25)


