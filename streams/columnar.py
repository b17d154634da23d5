"""Avro records (Confluent wire format) of flat numeric schemas, decoded a batch at a time.

Decoding record by record (``fastavro.schemaless_reader``, then a dict per record) is most of the
CPU time of ingest. Interaction events are usually flat records of numbers (ids, times, amounts):
for such a writer schema every field is a zig-zag varint (``int``/``long``) or a fixed-width
little-endian float (``float``/``double``), so a whole batch can be decoded with numpy, one field
at a time over all records: gather the next 10 bytes of every record, find where each varint ends,
add up its 7-bit groups. No dict is built, and only the columns the plan needs are kept.

The result must be exactly what the codec would decode. A record is decoded here only when that is
certain: header magic 0, a registered schema id whose fields are all of those four types, a size
within the limits, every varint ending within 10 bytes, and the last field ending exactly at the
record's end. Every other record (bad bytes of any kind, schemas with strings, unions, ...) is
left to the codec, which gives the decoded record or the reason it is refused, as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from schemas.registry import HEADER, MAGIC_BYTE, SchemaRegistryError

_VARINT = ("int", "long")
_FIXED = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
_MAX_VARINT = 10  # bytes of a 64-bit varint
_SHIFTS = (np.arange(_MAX_VARINT, dtype=np.uint64) * np.uint64(7))
_PAD = bytes(_MAX_VARINT + 8)  # lets the gathers read past the last record


@dataclass(frozen=True)
class FlatLayout:
    """The fields of a flat numeric record schema, in order: (name, "varint" or a numpy dtype)."""

    fields: tuple[tuple[str, Any], ...]


def flat_layout(schema: Any) -> FlatLayout | None:
    """The layout of a writer schema this module decodes, or None (left to the codec)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields = []
    for field in schema.get("fields", ()):
        kind = field.get("type") if isinstance(field, dict) else None
        if isinstance(kind, dict) and not kind.get("logicalType"):
            kind = kind.get("type")  # {"type": "long"} spelled as a schema
        if not isinstance(kind, str):  # unions, logical types, nested records: left to the codec
            return None
        if kind in _VARINT:
            fields.append((field["name"], "varint"))
        elif kind in _FIXED:
            fields.append((field["name"], _FIXED[kind]))
        else:
            return None
    return FlatLayout(tuple(fields))


class ColumnarDecoder:
    """Decodes the values of one batch into columns, for the records it can decode exactly.

    ``registry``: the schema registry of the codec (``schema(id)``); ``max_bytes``: the smaller of
    the codec's and the service's payload limits (larger records are left to the codec, which
    refuses them).
    """

    def __init__(self, registry: Any, max_bytes: int):
        self.registry = registry
        self.max_bytes = max_bytes
        self._layouts: dict[int, FlatLayout | None] = {}

    def layout(self, sid: int) -> FlatLayout | None:
        if sid in self._layouts:
            return self._layouts[sid]
        try:
            schema = self.registry.schema(sid)
        except SchemaRegistryError:
            return None  # unknown now, perhaps registered later: not cached
        layout = self._layouts[sid] = flat_layout(schema)
        return layout

    def decode(self, values: Sequence[bytes | None],
               columns: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(rows, cols)``: ``rows`` = indices of the values decoded here (ascending), ``cols`` =
        each wanted column's values for those rows (a column the schema lacks is absent). Records
        of several schemas are fine as long as each has every wanted column; the others are left out.
        """
        n = len(values)
        if n == 0:
            return np.zeros(0, np.int64), {}
        sizes = np.fromiter((len(v) if v is not None else 0 for v in values), np.int64, n)
        buf = np.frombuffer(b"".join([v for v in values if v]) + _PAD, np.uint8)
        starts = np.zeros(n, np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        ends = starts + sizes
        fits = (sizes > HEADER.size) & (sizes <= self.max_bytes)
        head = starts[fits]
        magic = buf[head]
        sid = ((buf[head + 1].astype(np.int64) << 24) | (buf[head + 2].astype(np.int64) << 16)
               | (buf[head + 3].astype(np.int64) << 8) | buf[head + 4].astype(np.int64))
        candidates = np.flatnonzero(fits)[magic == (MAGIC_BYTE & 0xFF)]
        sid = sid[magic == (MAGIC_BYTE & 0xFF)]
        wanted = tuple(columns)
        rows_parts, col_parts = [], {c: [] for c in wanted}
        for schema_id in np.unique(sid).tolist():
            layout = self.layout(int(schema_id))
            if layout is None or not set(wanted) <= {name for name, _ in layout.fields}:
                continue
            idx = candidates[sid == schema_id]
            good, cols = _decode_flat(buf, starts[idx] + HEADER.size, ends[idx], layout, wanted)
            rows_parts.append(idx[good])
            for c in wanted:
                col_parts[c].append(cols[c][good])
        if not rows_parts:
            return np.zeros(0, np.int64), {}
        rows = np.concatenate(rows_parts)
        order = np.argsort(rows, kind="stable")
        cols = {}
        for c in wanted:
            parts = col_parts[c]
            if len({p.dtype for p in parts}) > 1:
                # Schemas disagree on this column's type (e.g. a long and a double): a numeric
                # concatenation would turn every value into the wider type, so keep each
                # value's own Python type and let the per-row check judge it.
                joined = np.empty(sum(len(p) for p in parts), dtype=object)
                joined[:] = [v for p in parts for v in p.tolist()]
            else:
                joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
            cols[c] = joined[order] if len(rows_parts) > 1 else joined
        return rows[order] if len(rows_parts) > 1 else rows, cols


def _decode_flat(buf: np.ndarray, pos: np.ndarray, ends: np.ndarray, layout: FlatLayout,
                 wanted: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Decode records of one layout whose bodies start at ``pos``; ``(ok mask, wanted columns)``."""
    ok = np.ones(len(pos), bool)
    pos = pos.copy()
    out = {}
    steps = np.arange(_MAX_VARINT)
    for name, kind in layout.fields:
        if kind == "varint":
            window = buf[pos[:, None] + steps]
            last = window < 0x80  # the byte that ends the varint
            ended = last.any(axis=1)
            length = np.argmax(last, axis=1) + 1
            # a 10th byte above 1 would carry bits past 64: left to the codec
            ok &= ended & ((length < _MAX_VARINT) | (window[:, -1] <= 1))
            if name in wanted:
                groups = (window & 0x7F).astype(np.uint64) << _SHIFTS
                groups[steps[None, :] >= length[:, None]] = 0
                raw = np.bitwise_or.reduce(groups, axis=1)
                out[name] = ((raw >> np.uint64(1)) ^ (np.uint64(0) - (raw & np.uint64(1)))).view(np.int64)
            pos += length
        else:
            width = kind.itemsize
            if name in wanted:
                out[name] = np.ascontiguousarray(buf[pos[:, None] + np.arange(width)]).view(kind).reshape(-1)
            pos += width
        ok &= pos <= ends
        pos[~ok] = 0  # a record already refused must not read past the buffer
    ok &= pos == ends  # no trailing bytes
    return ok, out
