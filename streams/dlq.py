"""The dead-letter topic: rejected records with the error and their source position.

Each dead letter is an Avro ``DeadLetter`` record (``schemas/avro/dead_letter.avsc``, subject
``dead-letters-value``, Confluent wire format) holding the source topic/partition/offset, the
reason, the error text (naming the field for row errors) and the original key and value bytes,
so it can be replayed after a fix. The same diagnosis is repeated in headers, so tools can
filter without decoding:

    relstream.dlq.reason, relstream.dlq.error, relstream.dlq.source.topic,
    relstream.dlq.source.partition, relstream.dlq.source.offset, relstream.dlq.source.size,
    relstream.dlq.truncated ("1" when only a prefix of an oversize value is kept)

Delivery is at-least-once: the consumer commits a batch only after every dead letter of it was
acknowledged by the broker (acks=all, idempotent producer), so a crash can repeat a dead letter
but never lose one.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from streams.records import DeadLetter

DLQ_SUBJECT = "dead-letters-value"
HEADER_PREFIX = "relstream.dlq."
# Oversize values are cut to this many bytes, so the dead letter itself always fits into the
# broker's message size limit.
OVERSIZE_KEEP_BYTES = 1024


class DeadLetterDeliveryError(RuntimeError):
    pass


def dead_letter_payload(dl: DeadLetter, max_payload_bytes: int) -> tuple[bytes, bool]:
    """The value bytes to keep, and whether they were truncated."""
    value = dl.value or b""
    if len(value) > max_payload_bytes:
        return value[:OVERSIZE_KEEP_BYTES], True
    return value, False


def dead_letter_record(dl: DeadLetter, payload: bytes, failed_at_ns: int) -> dict:
    return {"source_topic": dl.topic, "source_partition": dl.partition, "source_offset": dl.offset,
            "reason": dl.reason, "error": dl.error, "payload": payload, "key": dl.key,
            "failed_at": failed_at_ns}


def dead_letter_headers(dl: DeadLetter, truncated: bool) -> list[tuple[str, bytes]]:
    h = [("reason", dl.reason), ("error", dl.error), ("source.topic", dl.topic),
         ("source.partition", str(dl.partition)), ("source.offset", str(dl.offset)),
         ("source.size", str(len(dl.value) if dl.value is not None else 0))]
    if truncated:
        h.append(("truncated", "1"))
    return [(HEADER_PREFIX + k, v.encode("utf-8")) for k, v in h]


@dataclass(frozen=True)
class ParsedDeadLetter:
    record: Mapping[str, Any]  # the decoded DeadLetter record
    headers: Mapping[str, str]  # relstream.dlq.* headers without the prefix

    @property
    def source(self) -> tuple[str, int, int]:
        r = self.record
        return r["source_topic"], r["source_partition"], r["source_offset"]

    @property
    def truncated(self) -> bool:
        return self.headers.get("truncated") == "1"


def parse_dead_letter(msg: Any, decode: Callable[[bytes], tuple[str, Mapping[str, Any]]]) -> ParsedDeadLetter:
    """Read a record of the DLQ topic back (tools, tests, replays); ``decode`` = codec.decode."""
    subject, record = decode(msg.value())
    if subject != DLQ_SUBJECT:
        raise ValueError(f"DLQ record at offset {msg.offset()} has subject {subject!r}, expected {DLQ_SUBJECT!r}")
    headers = {k[len(HEADER_PREFIX):]: v.decode("utf-8") for k, v in (msg.headers() or [])
               if k.startswith(HEADER_PREFIX)}
    return ParsedDeadLetter(record, headers)


class DeadLetterSink:
    """Produces dead letters; :meth:`wait` returns only when the broker acknowledged them all.

    ``producer`` is a ``confluent_kafka.Producer`` (acks=all, enable.idempotence=true);
    ``encode(subject, record)`` the Avro codec's encode. Failed deliveries are re-produced by
    :meth:`wait` before it raises, so the caller simply retries :meth:`wait` with backoff.
    """

    def __init__(self, producer: Any, topic: str, encode: Callable[[str, dict], bytes],
                 max_payload_bytes: int, now_ns: Callable[[], int] = time.time_ns):
        self.producer = producer
        self.topic = topic
        self._encode = encode
        self.max_payload_bytes = max_payload_bytes
        self._now_ns = now_ns
        self._lock = threading.Lock()
        self._in_flight = 0
        self._failed: list[tuple[DeadLetter, str]] = []

    def send(self, letters: Sequence[DeadLetter]) -> None:
        for dl in letters:
            self._produce(dl)
        self.producer.poll(0)

    def _produce(self, dl: DeadLetter) -> None:
        payload, truncated = dead_letter_payload(dl, self.max_payload_bytes)
        value = self._encode(DLQ_SUBJECT, dead_letter_record(dl, payload, self._now_ns()))

        def on_delivery(err, _msg, dl=dl):
            with self._lock:
                self._in_flight -= 1
                if err is not None:
                    self._failed.append((dl, str(err)))

        with self._lock:
            self._in_flight += 1
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=dl.key,
                                      headers=dead_letter_headers(dl, truncated), on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self.producer.poll(0.05)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._in_flight + len(self._failed)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until every dead letter sent so far is acknowledged; raise if any failed."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                in_flight = self._in_flight
            if in_flight == 0:
                break
            if time.monotonic() >= deadline:
                raise DeadLetterDeliveryError(f"{in_flight} dead letter(s) to {self.topic} not acknowledged "
                                              f"after {timeout:.0f}s")
            self.producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
        with self._lock:
            failed, self._failed = self._failed, []
        if failed:
            for dl, _err in failed:
                self._produce(dl)
            raise DeadLetterDeliveryError(f"{len(failed)} dead letter(s) to {self.topic} failed, e.g. "
                                          f"{failed[0][1]}; re-sent")
