"""Kafka records -> window appends (pure logic, no I/O).

A record of an interaction topic is decoded with the Avro codec (Confluent wire format) and
turned into window appends by :func:`schemas.tensors.interactions_of` -- the same function the
backfill, offline replay and scorer use, so the hop logic lives in exactly one place.

Every record either yields its appends or a :class:`DeadLetter` naming why it was rejected (the
reason from the vocabulary shared with the scorer, ``schemas.dead_letter``); a batch of records
therefore never raises because of its content (bad records cannot crash the consumer or block a
partition). On a topic whose dead letters another service writes, a bad record is only counted
(``DecodedBatch.skipped``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

from schemas.dead_letter import DEFAULT_MAX_PAYLOAD_BYTES, UNMAPPED_TOPIC, RecordRejected, check_record
from schemas.plan import ServingPlan
from schemas.tensors import Interaction, interactions_of

Append = tuple[str, Any, Interaction]  # (hop key, entity id, interaction), as interactions_of returns


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record, with where it came from and why (``reason`` from
    ``schemas.dead_letter.REASONS``); the sink turns it into the shared entry format."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None


class RecordDecoder:
    """Decodes record values of mapped topics into window appends.

    ``decode`` is the codec's ``decode(bytes) -> (subject, record)``; it must raise (any
    exception) on bytes it cannot read. ``decode_errors`` are the exception types that mean
    "bad bytes" (dead-lettered); anything else is a bug and propagates. Whether a record is bad,
    and why, is decided by ``schemas.dead_letter.check_record`` -- the scorer's verdict too.

    ``skip_dead_letters_on``: topics whose bad records another service dead-letters (the
    scorer's topics, see ``ingest.dead_letters``); their bad records are skipped and counted.
    """

    def __init__(self, plan: ServingPlan, topic_tables: Mapping[str, str],
                 decode: Callable[[bytes], tuple[str, Mapping[str, Any]]],
                 decode_errors: tuple[type[BaseException], ...],
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 skip_dead_letters_on: Iterable[str] = ()):
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
        self.skip_dead_letters_on = frozenset(skip_dead_letters_on)
        # the row check of each topic, built once (this runs for every record)
        self._row_checks = {topic: partial(interactions_of, plan, table) for topic, table in self.topic_tables.items()}

    def row_appends(self, table: str, row: Mapping[str, Any]) -> list[Append]:
        """The one path from a row to appends (live and backfill alike)."""
        return interactions_of(self.plan, table, row)

    def appends(self, topic: str, value: bytes | None) -> list[Append]:
        row_check = self._row_checks.get(topic)
        if row_check is None:
            raise RecordRejected(UNMAPPED_TOPIC, f"topic {topic!r} has no table; mapped: {sorted(self.topic_tables)}")
        return check_record(value, self._decode, self.max_payload_bytes, row_check, self._decode_errors)


@dataclass
class DecodedBatch:
    """What one consumed batch amounts to."""

    appends: list[Append] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # bad records of topics another service dead-letters: (topic, reason) -> count
    skipped: Counter = field(default_factory=Counter)
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
    not_ours = decoder.skip_dead_letters_on
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
            if topic in not_ours:
                out.skipped[(topic, rej.reason)] += 1
            else:
                out.dead_letters.append(dead_letter_of(msg, rej.reason, rej.detail))
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


def dead_letter_of(msg: Any, reason: str, detail: str) -> DeadLetter:
    ts_type, ts = msg.timestamp()
    return DeadLetter(msg.topic(), msg.partition(), msg.offset(), reason, detail, msg.value(), msg.key(),
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
