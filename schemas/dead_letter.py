"""Dead letters shared by `relstream ingest` and `relstream score`: one reason vocabulary, one
function that decides the reason of a bad record, one entry format.

Both services consume Avro records (Confluent wire format) and reject the same bad bytes; before
this module each had its own checks, so the same record got different reasons (empty vs
too_short, oversize vs bad_magic) and a different amount of payload kept. Now:

* :func:`check_record` is the only place that decides whether a record is bad and why. Its checks
  run in a fixed order, so any value gets exactly one reason of :data:`RECORD_REASONS`;
* :func:`dead_letter_entry` is the only place that builds a :class:`DeadLetterEntry`: who wrote it
  (service, consumer group), where the record came from (topic, partition, offset), the reason, a
  detail in plain words, and the payload truncated the same way by both services (the first
  :data:`KEEP_PAYLOAD_BYTES` bytes plus the original size);
* :func:`log_dead_letter` writes the one log line per dead letter (logger ``relstream.dead_letters``).

Which service writes the dead letter of a topic both consume is decided by the services' settings
(docs/streams.md, "Who dead-letters a shared topic").
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from schemas.registry import DecodeError
from schemas.values import RowError

DLQ_SUBJECT = "dead-letters-value"
HEADER_PREFIX = "relstream.dlq."
# Both services keep at most this many bytes of a bad value: dead letters stay small whatever
# arrived, and two services dead-lettering the same record keep exactly the same bytes. The source
# position (topic, partition, offset) leads back to the whole record while retention lasts.
KEEP_PAYLOAD_BYTES = 1024
# The default size limit of both services (ingest.max_payload_bytes, score.max_payload_bytes).
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024

# ---- the reason vocabulary (closed: an entry with another reason cannot be built) -------------
# Decided by check_record, in this order, from the record alone:
EMPTY = "empty"  # null value (tombstone) or zero bytes
OVERSIZE = "oversize"  # larger than the service's max_payload_bytes
TOO_SHORT = "too_short"  # shorter than the 5-byte wire-format header
BAD_MAGIC = "bad_magic"  # first byte is not the wire format's magic byte 0
UNKNOWN_SCHEMA = "unknown_schema"  # schema id not in the registry
UNDECODABLE = "undecodable"  # the Avro body does not match its schema (cut short, trailing bytes, ...)
INVALID_ROW = "invalid_row"  # decodes, but is not a valid row for the plan (missing field, wrong type)
RECORD_REASONS = (EMPTY, OVERSIZE, TOO_SHORT, BAD_MAGIC, UNKNOWN_SCHEMA, UNDECODABLE, INVALID_ROW)
# Failures of a valid record that only one service can see:
UNMAPPED_TOPIC = "unmapped_topic"  # ingest: a topic without a plan table
STORE_REJECTED = "store_rejected"  # ingest: the window store refused the record's rows (not an outage)
MODEL_REJECTED = "model_rejected"  # score: Triton refused the record's tensors
PROCESSING_REASONS = (UNMAPPED_TOPIC, STORE_REJECTED, MODEL_REJECTED)
REASONS = RECORD_REASONS + PROCESSING_REASONS

INGEST = "ingest"
SCORE = "score"
SERVICES = (INGEST, SCORE)  # the CLI command that wrote the entry

# the codec's DecodeError.reason -> the shared vocabulary
_DECODE_REASONS = {"oversize": OVERSIZE, "too_short": TOO_SHORT, "bad_magic": BAD_MAGIC,
                   "unknown_schema": UNKNOWN_SCHEMA, "invalid_body": UNDECODABLE, "not_bytes": UNDECODABLE}
# what a row check raises for content that does not fit the plan
ROW_ERRORS = (RowError, ValueError, TypeError, OverflowError)

dead_letter_log = logging.getLogger("relstream.dead_letters")


class RecordRejected(Exception):
    """A bad record: ``reason`` from :data:`REASONS`, ``detail`` in plain words."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def check_record(value: bytes | None, decode: Callable[[bytes], tuple[str, Mapping[str, Any]]],
                 max_payload_bytes: int, check_row: Callable[[Mapping[str, Any]], Any] | None = None,
                 decode_errors: tuple[type[BaseException], ...] = (DecodeError,)) -> Any:
    """What ``check_row(record)`` returns for a good record (the decoded record without
    ``check_row``); :class:`RecordRejected` with one reason of :data:`RECORD_REASONS` otherwise.

    ``decode`` is the codec's ``decode(bytes) -> (subject, record)``; ``decode_errors`` the
    exceptions that mean "bad bytes" (any other exception is a bug and propagates).
    ``check_row`` is the service's own use of the row (ingest: window appends; score: the event
    to score); whatever of :data:`ROW_ERRORS` it raises makes the record an ``invalid_row``.
    """
    if not value:
        raise RecordRejected(EMPTY, "the record has no value (null or 0 bytes)")
    size = len(value)
    if size > max_payload_bytes:
        raise RecordRejected(OVERSIZE, f"the value has {size} bytes, more than max_payload_bytes={max_payload_bytes}")
    try:
        _subject, record = decode(value)
    except decode_errors as exc:
        code = getattr(exc, "reason", None)
        detail = str(exc) or type(exc).__name__
        if code and detail.startswith(f"{code}: "):
            detail = detail[len(code) + 2:]
        raise RecordRejected(_DECODE_REASONS.get(code, UNDECODABLE), detail) from None
    if check_row is None:
        return record
    try:
        return check_row(record)
    except ROW_ERRORS as exc:
        raise invalid_row(exc) from None


def invalid_row(exc: BaseException) -> RecordRejected:
    """The rejection of a record whose row check raised ``exc`` (one of :data:`ROW_ERRORS`)."""
    return RecordRejected(INVALID_ROW, str(exc) if isinstance(exc, RowError) else f"{type(exc).__name__}: {exc}")


def reason_of(value: bytes | None, decode: Callable[[bytes], tuple[str, Mapping[str, Any]]],
              max_payload_bytes: int, check_row: Callable[[Mapping[str, Any]], Any] | None = None) -> str | None:
    """The reason :func:`check_record` gives ``value``, or None for a good record."""
    try:
        check_record(value, decode, max_payload_bytes, check_row)
    except RecordRejected as rej:
        return rej.reason
    return None


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead letter, as both services write it (Avro ``DeadLetter``, subject
    ``dead-letters-value``, plus the same facts in ``relstream.dlq.*`` headers)."""

    source_service: str  # "ingest" or "score"
    consumer_group: str  # the group of the consumer that read the record
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    payload: bytes  # the first KEEP_PAYLOAD_BYTES bytes of the value (all of it when shorter)
    payload_size: int  # bytes of the original value
    key: bytes | None = None
    failed_at: int = 0  # ns since the epoch

    @property
    def truncated(self) -> bool:
        return self.payload_size > len(self.payload)

    @property
    def source(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset

    def to_record(self) -> dict:
        return {"source_service": self.source_service, "consumer_group": self.consumer_group,
                "source_topic": self.topic, "source_partition": self.partition, "source_offset": self.offset,
                "reason": self.reason, "detail": self.detail, "payload": self.payload,
                "payload_size": self.payload_size, "key": self.key, "failed_at": self.failed_at}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "DeadLetterEntry":
        payload = record["payload"]
        size = record.get("payload_size", -1)
        return cls(record.get("source_service", ""), record.get("consumer_group", ""), record["source_topic"],
                   record["source_partition"], record["source_offset"], record["reason"],
                   record.get("detail", record.get("error", "")), payload, len(payload) if size < 0 else size,
                   record.get("key"), record["failed_at"])

    def headers(self) -> list[tuple[str, bytes]]:
        """The entry's facts as ``relstream.dlq.*`` headers, for tools that filter without decoding."""
        h = [("source.service", self.source_service), ("source.group", self.consumer_group),
             ("source.topic", self.topic), ("source.partition", str(self.partition)),
             ("source.offset", str(self.offset)), ("source.size", str(self.payload_size)),
             ("reason", self.reason), ("detail", self.detail)]
        if self.truncated:
            h.append(("truncated", "1"))
        return [(HEADER_PREFIX + k, v.encode("utf-8")) for k, v in h]

    def log_message(self) -> str:
        """key=value pairs, one line (the detail quoted, newlines escaped)."""
        detail = self.detail.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return (f"dead letter service={self.source_service} group={self.consumer_group} reason={self.reason} "
                f"topic={self.topic} partition={self.partition} offset={self.offset} size={self.payload_size} "
                f'detail="{detail}"')


def dead_letter_entry(*, service: str, group: str, topic: str, partition: int, offset: int, reason: str,
                      detail: str, value: bytes | None, key: bytes | None = None,
                      failed_at: int | None = None) -> DeadLetterEntry:
    """The only way the services build an entry (so truncation and the vocabulary are the same)."""
    if service not in SERVICES:
        raise ValueError(f"dead letter: unknown service {service!r}; one of {SERVICES}")
    if reason not in REASONS:
        raise ValueError(f"dead letter: unknown reason {reason!r}; one of {REASONS}")
    value = bytes(value or b"")
    return DeadLetterEntry(service, group, topic, partition, offset, reason, detail, value[:KEEP_PAYLOAD_BYTES],
                           len(value), key, time.time_ns() if failed_at is None else failed_at)


def log_dead_letter(entry: DeadLetterEntry) -> None:
    """The one log line of a dead letter the broker acknowledged (ingest) or committed (score)."""
    dead_letter_log.warning(entry.log_message())


def parse_dead_letter(msg: Any, decode: Callable[[bytes], tuple[str, Mapping[str, Any]]]) -> DeadLetterEntry:
    """A record of the dead-letter topic read back (tools, tests, replays); ``decode`` = codec.decode."""
    subject, record = decode(msg.value())
    if subject != DLQ_SUBJECT:
        raise ValueError(f"DLQ record at offset {msg.offset()} has subject {subject!r}, expected {DLQ_SUBJECT!r}")
    return DeadLetterEntry.from_record(record)


def dead_letter_headers(msg: Any) -> dict[str, str]:
    """The ``relstream.dlq.*`` headers of a DLQ record, without the prefix."""
    return {k[len(HEADER_PREFIX):]: v.decode("utf-8") for k, v in (msg.headers() or []) if k.startswith(HEADER_PREFIX)}


__all__ = [
    "BAD_MAGIC", "DEFAULT_MAX_PAYLOAD_BYTES", "DLQ_SUBJECT", "DeadLetterEntry", "EMPTY", "HEADER_PREFIX",
    "INGEST", "INVALID_ROW", "KEEP_PAYLOAD_BYTES", "MODEL_REJECTED", "OVERSIZE", "PROCESSING_REASONS",
    "REASONS", "RECORD_REASONS", "invalid_row", "ROW_ERRORS", "RecordRejected", "SCORE", "SERVICES", "STORE_REJECTED",
    "TOO_SHORT", "UNDECODABLE", "UNKNOWN_SCHEMA", "UNMAPPED_TOPIC", "check_record", "dead_letter_entry",
    "dead_letter_headers", "dead_letter_log", "log_dead_letter", "parse_dead_letter", "reason_of",
]
