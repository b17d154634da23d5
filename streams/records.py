"""Kafka records -> window appends (pure logic, no I/O).

A record of an interaction topic is decoded with the Avro codec (Confluent wire format) and
turned into window appends by :func:`schemas.tensors.interactions_of` -- the same function the
backfill, offline replay and scorer use, so the hop logic lives in exactly one place.

Every record either yields its appends or a :class:`DeadLetter` naming why it was rejected; a
batch of records therefore never raises because of its content (bad records cannot crash the
consumer or block a partition).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from schemas.plan import ServingPlan
from schemas.tensors import Interaction, RowError, interactions_of

Append = tuple[str, Any, Interaction]  # (hop key, entity id, interaction), as interactions_of returns

# Reasons a record is dead-lettered (the DLQ record's `reason`). Decode failures use the codec's
# own reason (bad_magic, too_short, unknown_schema, invalid_body, oversize, not_bytes).
REASON_EMPTY = "empty"  # null value (tombstone) or zero bytes
REASON_OVERSIZE = "oversize"  # larger than max_payload_bytes
REASON_DECODE = "decode"  # fallback when the decode error carries no reason
REASON_ROW = "bad_row"  # decoded, but not a valid row of the table (missing field, wrong type)
REASON_UNMAPPED = "unmapped_topic"  # a topic with no table in the topic -> table mapping
REASON_STORE = "store_rejected"  # the window store refused the record's appends (not an outage)


class RecordRejected(Exception):
    def __init__(self, reason: str, error: str):
        self.reason = reason
        self.error = error
        super().__init__(f"{reason}: {error}")


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    reason: str
    error: str
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None


class RecordDecoder:
    """Decodes record values of mapped topics into window appends.

    ``decode`` is the codec's ``decode(bytes) -> (subject, record)``; it must raise (any
    exception) on bytes it cannot read. ``decode_errors`` are the exception types that mean
    "bad bytes" (dead-lettered); anything else is a bug and propagates.
    """

    def __init__(self, plan: ServingPlan, topic_tables: Mapping[str, str],
                 decode: Callable[[bytes], tuple[str, Mapping[str, Any]]],
                 decode_errors: tuple[type[BaseException], ...],
                 max_payload_bytes: int = 1 << 20):
        for topic, table in topic_tables.items():
            if table not in plan.tables:
                raise ValueError(f"topics.{topic}: table {table!r} is not in plan {plan.name!r} "
                                 f"(tables: {sorted(plan.tables)})")
        if max_payload_bytes <= 0:
            raise ValueError(f"max_payload_bytes: must be > 0, got {max_payload_bytes}")
        self.plan = plan
        self.topic_tables = dict(topic_tables)
        self._decode = decode
        self._decode_errors = decode_errors
        self.max_payload_bytes = max_payload_bytes

    def row_appends(self, table: str, row: Mapping[str, Any]) -> list[Append]:
        """The one path from a row to appends (live and backfill alike)."""
        return interactions_of(self.plan, table, row)

    def appends(self, topic: str, value: bytes | None) -> list[Append]:
        table = self.topic_tables.get(topic)
        if table is None:
            raise RecordRejected(REASON_UNMAPPED, f"topic {topic!r} has no table; mapped: {sorted(self.topic_tables)}")
        if not value:
            raise RecordRejected(REASON_EMPTY, "record has no value (null or 0 bytes)")
        if len(value) > self.max_payload_bytes:
            raise RecordRejected(REASON_OVERSIZE,
                                 f"payload of {len(value)} bytes exceeds max_payload_bytes={self.max_payload_bytes}")
        try:
            _subject, record = self._decode(value)
        except self._decode_errors as exc:
            raise RecordRejected(getattr(exc, "reason", None) or REASON_DECODE,
                                 str(exc) or type(exc).__name__) from None
        try:
            return self.row_appends(table, record)
        except RowError as exc:
            raise RecordRejected(REASON_ROW, str(exc)) from None


@dataclass
class DecodedBatch:
    """What one consumed batch amounts to."""

    appends: list[Append] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (topic, partition) -> offset to commit (last consumed offset + 1): covers good and
    # dead-lettered records alike, so a bad record never blocks its partition.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records_by_topic: Counter = field(default_factory=Counter)
    newest_event_time: int | None = None
    consumer_errors: list[str] = field(default_factory=list)
    # (message, start, end): appends[start:end] came from message -- to isolate a record the
    # store refuses without giving up the rest of the batch
    spans: list[tuple[Any, int, int]] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(self.records_by_topic.values())


def decode_batch(messages: Iterable[Any], decoder: RecordDecoder) -> DecodedBatch:
    """Decode confluent-kafka ``Message`` objects (or anything with the same methods)."""
    out = DecodedBatch()
    appends_out, spans, next_offsets = out.appends, out.spans, out.next_offsets
    counts: dict[str, int] = {}
    newest = None
    to_appends = decoder.appends
    for msg in messages:  # the hot loop of ingestion: locals only
        err = msg.error()
        if err is not None:
            # consumer-level events (e.g. partition EOF, transient broker errors): no record
            out.consumer_errors.append(str(err))
            continue
        topic, offset = msg.topic(), msg.offset()
        counts[topic] = counts.get(topic, 0) + 1
        tp = (topic, msg.partition())
        if offset >= next_offsets.get(tp, 0):
            next_offsets[tp] = offset + 1
        try:
            appends = to_appends(topic, msg.value())
        except RecordRejected as rej:
            out.dead_letters.append(dead_letter_of(msg, rej.reason, rej.error))
            continue
        for item in appends:
            t = item[2].event_time
            if newest is None or t > newest:
                newest = t
        start = len(appends_out)
        appends_out.extend(appends)
        spans.append((msg, start, len(appends_out)))
    out.records_by_topic.update(counts)
    out.newest_event_time = newest
    return out


def dead_letter_of(msg: Any, reason: str, error: str) -> DeadLetter:
    ts_type, ts = msg.timestamp()
    return DeadLetter(msg.topic(), msg.partition(), msg.offset(), reason, error, msg.value(), msg.key(),
                      ts if ts_type else None)


def parse_topic_tables(specs: Sequence[str]) -> dict[str, str]:
    """``["transactions", "clicks=interactions"]`` -> ``{topic: table}`` (table defaults to topic)."""
    out: dict[str, str] = {}
    for spec in specs:
        topic, sep, table = spec.partition("=")
        topic, table = topic.strip(), (table.strip() if sep else topic.strip())
        if not topic or not table:
            raise ValueError(f"--topic: expected TOPIC or TOPIC=TABLE, got {spec!r}")
        if topic in out and out[topic] != table:
            raise ValueError(f"--topic: topic {topic!r} mapped twice ({out[topic]!r} and {table!r})")
        out[topic] = table
    return out
