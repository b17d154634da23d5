"""Kafka records -> window appends (pure logic, no I/O).

A record of an interaction topic is decoded with the Avro codec (Confluent wire format) and
turned into window appends by :func:`schemas.interactions.interactions_of` -- the same function the
backfill, offline replay and scorer use, so the hop logic lives in exactly one place.

Live ingestion takes a batch at a time: each topic's records are decoded together (flat numeric
records column by column, :mod:`streams.columnar`; the others by the codec) and turned into window
rows of every hop at once by :func:`schemas.interactions.interactions_of_columns`, which falls back to
``interactions_of`` for any row that is not plainly typed -- record for record the same verdict,
appends and dead letters as the per-record path (:meth:`RecordDecoder.appends`, the reference).

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

import numpy as np

from schemas.dead_letter import DEFAULT_MAX_PAYLOAD_BYTES, UNMAPPED_TOPIC, RecordRejected, check_record, invalid_row
from schemas.interactions import (MISSING, HopRows, Interaction, InteractionBatch, interactions_of,
                                  interactions_of_columns, interactions_or_error)
from schemas.plan import ServingPlan
from streams.columnar import ColumnarDecoder

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

    ``columnar``: decodes the records of flat numeric schemas a batch at a time
    (:class:`streams.columnar.ColumnarDecoder`); the records it leaves go through ``decode``.
    """

    def __init__(self, plan: ServingPlan, topic_tables: Mapping[str, str],
                 decode: Callable[[bytes], tuple[str, Mapping[str, Any]]],
                 decode_errors: tuple[type[BaseException], ...],
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 skip_dead_letters_on: Iterable[str] = (),
                 columnar: ColumnarDecoder | None = None):
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
        self.columnar = columnar
        # the row check of each topic, built once (this runs for every record)
        self._row_checks = {topic: partial(interactions_of, plan, table) for topic, table in self.topic_tables.items()}

    def row_appends(self, table: str, row: Mapping[str, Any]) -> list[Append]:
        """The one path from a row to appends (live and backfill alike)."""
        return interactions_of(self.plan, table, row)

    def appends(self, topic: str, value: bytes | None) -> list[Append]:
        """The appends of one record (the per-record reference of :meth:`decode_values`)."""
        row_check = self._row_checks.get(topic)
        if row_check is None:
            raise RecordRejected(UNMAPPED_TOPIC, f"topic {topic!r} has no table; mapped: {sorted(self.topic_tables)}")
        return check_record(value, self._decode, self.max_payload_bytes, row_check, self._decode_errors)

    def decode_values(self, topic: str, values: Sequence[bytes | None]) -> tuple[np.ndarray, InteractionBatch,
                                                                               list[tuple[int, RecordRejected]]]:
        """The record values of one topic, a batch at a time: ``(good, rows, rejected)``.

        ``rows`` = the appends of the good records (``good[j]`` = the index in ``values`` of row
        ``j``); ``rejected`` = ``(index, rejection)`` of the others. Record for record the same
        verdict and the same appends as :meth:`appends`.
        """
        table = self.topic_tables.get(topic)
        if table is None:
            rej = RecordRejected(UNMAPPED_TOPIC, f"topic {topic!r} has no table; mapped: {sorted(self.topic_tables)}")
            return np.zeros(0, np.int64), InteractionBatch(0, (), {}), [(i, rej) for i in range(len(values))]
        needed = self.plan.interaction_columns.get(table, ())
        fast, columns = (self.columnar.decode(values, needed) if self.columnar is not None and needed
                         else (np.zeros(0, np.int64), {}))
        records: dict[int, Any] = {}
        rejected: list[tuple[int, RecordRejected]] = []
        rest = range(len(values)) if len(fast) == 0 else np.setdiff1d(np.arange(len(values)), fast).tolist()
        for i in rest:
            try:
                records[i] = check_record(values[i], self._decode, self.max_payload_bytes, None, self._decode_errors)
            except RecordRejected as rej:
                rejected.append((i, rej))
        if not records:
            good = fast
            batch = interactions_of_columns(self.plan, table, columns, len(good))
        else:  # some records took the codec: put them in their places among the columnar ones
            good = np.union1d(fast, np.fromiter(records, np.int64, len(records)))
            at = {i: j for j, i in enumerate(good.tolist())}
            cols = {c: [MISSING] * len(good) for c in needed}
            for c in needed:
                col = cols[c]
                if c in columns:
                    for i, v in zip(fast.tolist(), columns[c].tolist()):
                        col[at[i]] = v
                for i, rec in records.items():
                    col[at[i]] = rec.get(c, MISSING) if isinstance(rec, Mapping) else MISSING
            batch = interactions_of_columns(self.plan, table, cols, len(good))
            odd = {at[i]: rec for i, rec in records.items() if not isinstance(rec, Mapping)}
            if odd:  # a record that is not a row at all: the reference names it
                fallback = dict(batch.fallback)
                fallback.update({j: interactions_or_error(self.plan, table, rec) for j, rec in odd.items()})
                batch = InteractionBatch(batch.n, batch.hops, fallback)
        errors = batch.errors
        if errors:
            rejected.extend((int(good[j]), invalid_row(exc)) for j, exc in errors.items())
            rejected.sort(key=lambda r: r[0])
        return good, batch, rejected


@dataclass
class TopicRows:
    """The good records of one topic in a batch and their window rows."""

    messages: list[Any]  # the good records' messages, row j of ``rows`` is messages[j]
    order: np.ndarray  # each message's position in the consumed batch
    rows: InteractionBatch


@dataclass
class DecodedBatch:
    """What one consumed batch amounts to."""

    parts: list[TopicRows] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # bad records of topics another service dead-letters: (topic, reason) -> count
    skipped: Counter = field(default_factory=Counter)
    # (topic, partition) -> offset to commit (last consumed offset + 1): covers good and
    # dead-lettered records alike, so a bad record never blocks its partition.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records_by_topic: Counter = field(default_factory=Counter)
    newest_event_time: int | None = None
    consumer_errors: list[str] = field(default_factory=list)
    _spans: list[tuple[Any, int, int]] | None = None
    _appends: list[Append] | None = None

    @property
    def records(self) -> int:
        return sum(self.records_by_topic.values())

    @property
    def window_rows(self) -> int:
        return sum(p.rows.window_rows for p in self.parts)

    @property
    def hop_rows(self) -> list[HopRows]:
        """The vectorised window rows of the batch, per topic and hop."""
        return [h for p in self.parts for h in p.rows.hops]

    def fallback_items(self) -> list[Append]:
        """The appends of the good rows that took the per-row reference path."""
        return [a for p in self.parts for a in p.rows.fallback_items()]

    @property
    def appends(self) -> list[Append]:
        """Every append, record by record in consumed order (each record's in hop order)."""
        if self._appends is None:
            self._materialise()
        return self._appends

    @property
    def spans(self) -> list[tuple[Any, int, int]]:
        """``(message, start, end)``: ``appends[start:end]`` came from message -- to isolate a
        record the store refuses without giving up the rest of the batch."""
        if self._spans is None:
            self._materialise()
        return self._spans

    def _materialise(self) -> None:
        per_record = []
        for part in self.parts:
            for j, appends in enumerate(part.rows.per_row()):
                if isinstance(appends, list):  # errors are dead letters already
                    per_record.append((int(part.order[j]), part.messages[j], appends))
        per_record.sort(key=lambda r: r[0])
        self._appends, self._spans = [], []
        for _, msg, appends in per_record:
            start = len(self._appends)
            self._appends.extend(appends)
            self._spans.append((msg, start, len(self._appends)))


def decode_batch(messages: Iterable[Any], decoder: RecordDecoder) -> DecodedBatch:
    """Decode confluent-kafka ``Message`` objects (or anything with the same methods): each
    topic's records as one batch (:meth:`RecordDecoder.decode_values`)."""
    out = DecodedBatch()
    messages = list(messages)
    errors = [m.error() for m in messages]  # the hot path of ingestion: one pass per field, in C
    if any(e is not None for e in errors):
        # consumer-level events (e.g. partition EOF, transient broker errors): no record
        out.consumer_errors.extend(str(e) for e in errors if e is not None)
        messages = [m for m, e in zip(messages, errors) if e is None]
    n = len(messages)
    topics = [m.topic() for m in messages]
    partitions = np.fromiter([m.partition() for m in messages], np.int64, n)
    offsets = np.fromiter([m.offset() for m in messages], np.int64, n)
    counts = Counter(topics)
    by_topic: dict[str, tuple[list[int], list[Any], list[bytes | None]]] = {}
    for topic in counts:
        positions = list(range(n)) if len(counts) == 1 else [i for i, t in enumerate(topics) if t == topic]
        msgs = messages if len(counts) == 1 else [messages[i] for i in positions]
        by_topic[topic] = (positions, msgs, [m.value() for m in msgs])
        parts, offs = partitions[positions], offsets[positions]
        for p in np.unique(parts).tolist():
            out.next_offsets[(topic, p)] = int(offs[parts == p].max()) + 1
    not_ours = decoder.skip_dead_letters_on
    dead: list[tuple[int, DeadLetter]] = []
    newest = None
    for topic, (positions, msgs, values) in by_topic.items():
        good, rows, rejected = decoder.decode_values(topic, values)
        for i, rej in rejected:
            if topic in not_ours:
                out.skipped[(topic, rej.reason)] += 1
            else:
                dead.append((positions[i], dead_letter_of(msgs[i], rej.reason, rej.detail)))
        if rows.n == 0:
            continue
        good_list = good.tolist()
        out.parts.append(TopicRows([msgs[i] for i in good_list], np.asarray(positions, np.int64)[good], rows))
        for hop in rows.hops:
            if len(hop):
                t = int(hop.event_time.max())
                newest = t if newest is None or t > newest else newest
        for item in rows.fallback_items():
            t = item[2].event_time
            newest = t if newest is None or t > newest else newest
    dead.sort(key=lambda d: d[0])
    out.dead_letters = [d for _, d in dead]
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
