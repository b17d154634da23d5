"""The dead-letter topic of `relstream ingest`: rejected records, acknowledged before the commit.

Each dead letter is the entry format shared with `relstream score` (``schemas.dead_letter``):
an Avro ``DeadLetter`` record (``schemas/avro/dead_letter.avsc``, subject ``dead-letters-value``,
Confluent wire format) saying which service and consumer group wrote it, the source
topic/partition/offset, the reason (shared vocabulary), a detail in plain words, the first 1 KiB
of the value and its original size; the same facts are repeated in ``relstream.dlq.*`` headers.
``schemas.dead_letter.parse_dead_letter`` reads one back.

Delivery is at-least-once: the consumer commits a batch only after every dead letter of it was
acknowledged by the broker (acks=all, idempotent producer), so a crash can repeat a dead letter
but never lose one.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

from schemas.dead_letter import DLQ_SUBJECT, INGEST, DeadLetterEntry, dead_letter_entry, parse_dead_letter
from streams.records import DeadLetter

__all__ = ["DLQ_SUBJECT", "DeadLetterDeliveryError", "DeadLetterSink", "parse_dead_letter"]


class DeadLetterDeliveryError(RuntimeError):
    pass


class DeadLetterSink:
    """Produces dead letters; :meth:`wait` returns only when the broker acknowledged them all.

    ``producer`` is a ``confluent_kafka.Producer`` (acks=all, enable.idempotence=true);
    ``encode(subject, record)`` the Avro codec's encode; ``consumer_group`` the group whose
    records it dead-letters (written into every entry). Failed deliveries are re-produced by
    :meth:`wait` before it raises, so the caller simply retries :meth:`wait` with backoff.
    """

    def __init__(self, producer: Any, topic: str, encode: Callable[[str, dict], bytes],
                 consumer_group: str, now_ns: Callable[[], int] = time.time_ns):
        self.producer = producer
        self.topic = topic
        self._encode = encode
        self.consumer_group = consumer_group
        self._now_ns = now_ns
        self._lock = threading.Lock()
        self._in_flight = 0
        self._failed: list[tuple[DeadLetterEntry, str]] = []

    def entry(self, dl: DeadLetter) -> DeadLetterEntry:
        return dead_letter_entry(service=INGEST, group=self.consumer_group, topic=dl.topic, partition=dl.partition,
                                 offset=dl.offset, reason=dl.reason, detail=dl.detail, value=dl.value, key=dl.key,
                                 failed_at=self._now_ns())

    def send(self, letters: Sequence[DeadLetter]) -> list[DeadLetterEntry]:
        """Produce the dead letters (asynchronously); returns their entries."""
        entries = [self.entry(dl) for dl in letters]
        for entry in entries:
            self._produce(entry)
        self.producer.poll(0)
        return entries

    def _produce(self, entry: DeadLetterEntry) -> None:
        value = self._encode(DLQ_SUBJECT, entry.to_record())

        def on_delivery(err, _msg, entry=entry):
            with self._lock:
                self._in_flight -= 1
                if err is not None:
                    self._failed.append((entry, str(err)))

        with self._lock:
            self._in_flight += 1
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=entry.key, headers=entry.headers(),
                                      on_delivery=on_delivery)
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
            for entry, _err in failed:
                self._produce(entry)
            raise DeadLetterDeliveryError(f"{len(failed)} dead letter(s) to {self.topic} failed, e.g. "
                                          f"{failed[0][1]}; re-sent")
