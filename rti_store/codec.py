"""Packed, order-preserving encoding of window rows (shared by every window store).

One stored row ("member") is::

    8 bytes  event_time + 2**63, unsigned big-endian
    8 bytes  event_id   + 2**63, unsigned big-endian
    N bytes  the hop's fixed-width columns, little-endian struct in plan column order
    ...      then each string column as <u4 length + utf-8 bytes

Adding 2**63 maps signed int64 onto unsigned order, and big-endian makes byte order equal numeric
order, so plain byte comparison of members sorts rows by (event time, event id) with exact
nanosecond precision. That is what lets Redis keep a window in a sorted set with all scores 0
(members ordered lexicographically; float scores would lose nanoseconds) and what the in-memory
store bisects on. The first 16 bytes are a row's identity (idempotency key). The hop's time column
is not repeated in the value part: it *is* the event time.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Sequence

import numpy as np

from schemas.interactions import HopRows, Interaction, Window
from schemas.plan import Hop, ServingPlan
from schemas.values import RowError, describe

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_BIAS = 2**63
_SIGN = np.uint64(1 << 63)
PREFIX = struct.Struct(">QQ")
TIME = struct.Struct(">Q")
ID_LEN = PREFIX.size  # bytes of (time, id): a row's identity
TIME_LEN = TIME.size
_LEN = struct.Struct("<I")

# The stored form of windows (row encoding and how a store keeps a window); part of every layout
# id, so data written in another form is never read (bump it when that form changes).
STORAGE_FORMAT = 2

# plan dtype -> (struct code, numpy little-endian dtype) for fixed-width columns
_FIXED = {"int64": ("q", "<i8"), "timestamp": ("q", "<i8"), "float32": ("f", "<f4"), "float64": ("d", "<f8")}


class CorruptRowError(ValueError):
    """A stored row that does not decode with the hop's layout (wrong plan or damaged data)."""


def clamp_i64(value: int) -> int:
    return INT64_MIN if value < INT64_MIN else INT64_MAX if value > INT64_MAX else value


def time_key(t: int) -> bytes:
    """The 8-byte sort prefix of event time ``t`` (clamped to int64)."""
    return TIME.pack(clamp_i64(int(t)) + _BIAS)


def time_of(member: bytes) -> int:
    return TIME.unpack_from(member)[0] - _BIAS


def identity(event_time: int, event_id: int) -> bytes:
    return PREFIX.pack(int(event_time) + _BIAS, int(event_id) + _BIAS)


class RowCodec:
    """Encodes interactions of one hop into members and decodes many members at once."""

    def __init__(self, plan: ServingPlan, hop: Hop):
        self.plan = plan
        self.hop = hop
        self.hop_key = hop.key.key
        table = plan.interaction_table(hop)
        self.time_column = table.time_column
        self.columns = tuple(hop.columns)
        self.dtypes = {c: table.columns[c] for c in self.columns}
        value_cols = [c for c in self.columns if c != self.time_column]
        self.fixed_columns = tuple(c for c in value_cols if self.dtypes[c] in _FIXED)
        self.string_columns = tuple(c for c in value_cols if self.dtypes[c] == "string")
        unknown = [c for c in value_cols if c not in self.fixed_columns and c not in self.string_columns]
        if unknown:
            raise RowError(f"{self.hop_key}:{unknown[0]}", f"dtype {self.dtypes[unknown[0]]!r} cannot be stored")
        self._fixed = struct.Struct("<" + "".join(_FIXED[self.dtypes[c]][0] for c in self.fixed_columns))
        self.fixed_size = ID_LEN + self._fixed.size
        self._np_fixed = np.dtype([("t", ">u8"), ("id", ">u8")]
                                  + [(c, _FIXED[self.dtypes[c]][1]) for c in self.fixed_columns])
        assert self._np_fixed.itemsize == self.fixed_size
        # Layout fingerprint: a plan change that changes the row layout must not decode old rows.
        layout = "|".join([f"v{STORAGE_FORMAT}"] + [f"{c}:{self.dtypes[c]}" for c in self.columns])
        self.layout_id = hashlib.blake2b(f"{self.hop_key}|{layout}".encode(), digest_size=4).hexdigest()

    # ----- encode ---------------------------------------------------------------------------
    def encode(self, item: Interaction) -> bytes:
        values = item.values
        t, i = item.event_time, item.event_id
        if type(t) is not int or type(i) is not int:
            t, i = self._ints(t, i)
        try:
            head = PREFIX.pack(t + _BIAS, i + _BIAS)
            body = self._fixed.pack(*[values[c] for c in self.fixed_columns])
        except (struct.error, KeyError, TypeError, OverflowError):
            self._raise_bad(item)
        if not self.string_columns:
            return head + body
        parts = [head, body]
        for c in self.string_columns:
            v = values.get(c) if hasattr(values, "get") else None
            if isinstance(v, str):
                v = v.encode("utf-8")
            elif not isinstance(v, (bytes, bytearray)):
                raise RowError(f"{self.hop_key}:{c}", f"expected a string, got {describe(v)}")
            parts.append(_LEN.pack(len(v)))
            parts.append(bytes(v))
        return b"".join(parts)

    def encode_rows(self, rows: HopRows, order: np.ndarray | None = None) -> list[bytes]:
        """The members of many window rows at once (numpy), byte for byte what :meth:`encode` gives;
        with ``order``, only those rows, in that order."""
        rows = _take(rows, order)
        flat, size = self._fixed_array(rows).tobytes(), self.fixed_size
        members = [flat[i:i + size] for i in range(0, len(flat), size)]
        if not self.string_columns:
            return members
        parts = [rows.values[c].tolist() for c in self.string_columns]
        for k, values in enumerate(parts):
            if any(type(v) is not bytes for v in values):
                parts[k] = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        return [b"".join([m, *[_LEN.pack(len(p[j])) + p[j] for p in parts]]) for j, m in enumerate(members)]

    def encode_rows_packed(self, rows: HopRows, order: np.ndarray | None = None) -> bytes:
        """Fixed-width rows (no string columns) back to back: ``b"".join(encode_rows(...))``."""
        if self.string_columns:
            raise ValueError(f"{self.hop_key}: rows with string columns are not fixed-width")
        return self._fixed_array(_take(rows, order)).tobytes()

    def _fixed_array(self, rows: HopRows) -> np.ndarray:
        """The fixed-width part of many rows as one structured array (checks float32 range)."""
        n = len(rows)
        arr = np.empty(n, dtype=self._np_fixed)
        arr["t"] = rows.event_time.view(np.uint64) ^ _SIGN
        arr["id"] = rows.event_id.view(np.uint64) ^ _SIGN
        for c in self.fixed_columns:
            values = rows.values[c]
            with np.errstate(over="ignore"):  # out of float32 range: checked just below
                arr[c] = values
            if self.dtypes[c] == "float32":
                wide = np.asarray(values, np.float64)
                bad = np.flatnonzero(np.isinf(arr[c]) & np.isfinite(wide))
                if len(bad):  # beyond float32: refused, with the message of the row-by-row encoding
                    self.encode(rows_item(rows, int(bad[0])))
        return arr

    def _ints(self, t: Any, i: Any) -> tuple[int, int]:
        for name, value in (("event_time", t), ("event_id", i)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise RowError(f"{self.hop_key}:{name}", f"expected a signed 64-bit integer, got "
                                                         f"{describe(value)}")
        return int(t), int(i)

    def _raise_bad(self, item: Interaction) -> None:
        for name, value in (("event_time", item.event_time), ("event_id", item.event_id)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not INT64_MIN <= value <= INT64_MAX:
                raise RowError(f"{self.hop_key}:{name}", f"expected a signed 64-bit integer, got {value!r}")
        values = item.values
        for c in self.fixed_columns:
            if c not in values:
                raise RowError(f"{self.hop_key}:{c}", "missing value")
            try:
                struct.pack("<" + _FIXED[self.dtypes[c]][0], values[c])
            except (struct.error, TypeError, OverflowError):
                raise RowError(f"{self.hop_key}:{c}",
                               f"expected {self.dtypes[c]}, got {describe(values[c])}") from None
        raise RowError(self.hop_key, f"cannot encode interaction {item!r}")

    # ----- decode ---------------------------------------------------------------------------
    def decode(self, members: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """``(event_time, event_id, columns)`` of members sorted oldest first (vectorised)."""
        n = len(members)
        if not self.string_columns:
            joined = b"".join(members)
            if len(joined) != n * self.fixed_size:
                raise CorruptRowError(f"{self.hop_key}: stored rows are not {self.fixed_size} bytes each "
                                      f"(layout {self.layout_id}); written with another plan?")
            return self._decode_fixed(joined)
        try:
            arr = np.frombuffer(b"".join(m[:self.fixed_size] for m in members), dtype=self._np_fixed)
        except ValueError:
            raise CorruptRowError(f"{self.hop_key}: stored row shorter than {self.fixed_size} bytes") from None
        return self._columns(arr, self._decode_strings(members))

    def _decode_fixed(self, joined: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rows of fixed width, back to back."""
        return self._columns(np.frombuffer(joined, dtype=self._np_fixed), None)

    def _columns(self, arr: np.ndarray, strings: dict[str, np.ndarray] | None):
        times = (arr["t"].astype(np.uint64) ^ _SIGN).view(np.int64)
        ids = (arr["id"].astype(np.uint64) ^ _SIGN).view(np.int64)
        cols: dict[str, np.ndarray] = {}
        for c in self.columns:
            if c == self.time_column:
                cols[c] = times
            elif strings is not None and c in strings:
                cols[c] = strings[c]
            else:
                cols[c] = arr[c].astype(np.dtype(_FIXED[self.dtypes[c]][1]).newbyteorder("="))
        return times, ids, cols

    def _decode_strings(self, members: Sequence[bytes]) -> dict[str, np.ndarray]:
        out = {c: np.empty(len(members), dtype=object) for c in self.string_columns}
        for i, m in enumerate(members):
            pos = self.fixed_size
            for c in self.string_columns:
                if pos + 4 > len(m):
                    raise CorruptRowError(f"{self.hop_key}:{c}: stored row truncated")
                (size,) = _LEN.unpack_from(m, pos)
                pos += 4
                if pos + size > len(m):
                    raise CorruptRowError(f"{self.hop_key}:{c}: stored row truncated")
                out[c][i] = bytes(m[pos:pos + size])
                pos += size
            if pos != len(m):
                raise CorruptRowError(f"{self.hop_key}: {len(m) - pos} trailing bytes in a stored row")
        return out

    def windows_packed(self, blobs: Sequence[bytes]) -> list[Window]:
        """Windows from packed strings of fixed-width rows (one string per window, rows sorted)."""
        if self.string_columns:
            raise ValueError(f"{self.hop_key}: rows with string columns are not fixed-width")
        size = self.fixed_size
        for b in blobs:
            if len(b) % size:
                raise CorruptRowError(f"{self.hop_key}: a stored window of {len(b)} bytes is not made of "
                                      f"{size}-byte rows (layout {self.layout_id}); written with another plan?")
        counts = [len(b) // size for b in blobs]
        if not any(counts):
            return [Window.empty(self.plan, self.hop) for _ in blobs]
        times, _, cols = self._decode_fixed(b"".join(blobs))
        return self._split(times, cols, counts)

    def windows(self, members: Sequence[bytes], counts: Sequence[int]) -> list[Window]:
        """Decode the concatenated rows of several windows at once and split them by ``counts``."""
        if not members:
            return [Window.empty(self.plan, self.hop) for _ in counts]
        times, _, cols = self.decode(members)
        return self._split(times, cols, counts)

    @staticmethod
    def _split(times: np.ndarray, cols: dict[str, np.ndarray], counts: Sequence[int]) -> list[Window]:
        out = []
        start = 0
        for n in counts:
            end = start + n
            out.append(Window(times[start:end], {c: a[start:end] for c, a in cols.items()}))
            start = end
        return out


def _take(rows: HopRows, order: np.ndarray | None) -> HopRows:
    if order is None:
        return rows
    return HopRows(rows.hop_key, rows.source[order], rows.entity[order], rows.event_time[order],
                   rows.event_id[order], {c: v[order] for c, v in rows.values.items()})


def rows_item(rows: HopRows, j: int) -> Interaction:
    """Window row ``j`` of ``rows`` as an :class:`Interaction` (Python values)."""
    return Interaction(event_id=int(rows.event_id[j]), event_time=int(rows.event_time[j]),
                       values={c: a[j].item() if a.dtype != object else a[j] for c, a in rows.values.items()})


def codecs_for(plan: ServingPlan) -> dict[str, RowCodec]:
    codecs = {h.key.key: RowCodec(plan, h) for h in plan.stored_hops}  # label keys too
    seen: dict[str, str] = {}
    for key, codec in codecs.items():
        if codec.layout_id in seen:  # 32-bit hash collision between two hops of one plan
            raise ValueError(f"hop ids of {key!r} and {seen[codec.layout_id]!r} collide; rename a column")
        seen[codec.layout_id] = key
    return codecs


def coerce_entity(plan: ServingPlan, hop: Hop, entity_id: Any) -> int | bytes:
    """An entity id typed by the hop's join column (int64 -> int, string -> bytes)."""
    dtype = plan.column_dtype(hop.key.target.table, hop.key.target.column)
    if dtype in ("int64", "timestamp"):
        if type(entity_id) is int:
            return entity_id
        if isinstance(entity_id, (int, np.integer)) and not isinstance(entity_id, bool):
            return int(entity_id)
        raise RowError(f"{hop.key.key}:{hop.key.target.column}",
                       f"entity id must be an integer, got {describe(entity_id)}")
    if dtype == "string":
        if isinstance(entity_id, bytes):
            return entity_id
        if isinstance(entity_id, str):
            return entity_id.encode("utf-8")
        raise RowError(f"{hop.key.key}:{hop.key.target.column}",
                       f"entity id must be a string, got {describe(entity_id)}")
    raise RowError(f"{hop.key.key}:{hop.key.target.column}", f"dtype {dtype!r} cannot be an entity id")
