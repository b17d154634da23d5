"""Malformed records for the Kafka path, generated with hypothesis, each known bad by construction
and double-checked against the services' own validation (an oracle that must reject it).

Categories (``Bad.category``):

* ``garbage``        random bytes (wrong magic byte or shorter than the 5-byte header), or empty
* ``unknown_schema`` magic byte 0 + a schema id that is not registered + random body
* ``truncated``      a valid transaction cut to a strict prefix
* ``wrong_schema``   a valid transaction body behind the id of another registered schema
* ``missing``        a transaction without one field (written with a registered reduced schema)
* ``mistyped``       one field of the wrong type (string/double/boolean where the plan wants a number)
* ``oversize``       a valid transaction padded beyond the ingest payload limit (built outside
                     hypothesis: a few hundred KiB each)
"""
from __future__ import annotations

import copy
import math
import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from schemas.registry import builtin_schema

FIELDS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
BASE_T = 1_700_000_000_000_000_000


@dataclass(frozen=True)
class Bad:
    category: str
    value: bytes | None
    field: str | None = None  # the field a missing/mistyped record gets wrong


def good_records():
    return st.fixed_dictionaries({
        "transaction_id": st.integers(0, 10**12),
        "tx_datetime": st.integers(BASE_T, BASE_T + 10**15),
        "customer_id": st.integers(0, 200),
        "terminal_id": st.integers(0, 400),
        "tx_amount": st.floats(0.5, 5000, allow_nan=False, width=32),
    })


# wrong types per field: (avro type, strategy of values that the plan must reject)
_RETYPES = {
    "transaction_id": ("string", st.text(alphabet="abcxyz-_ ", min_size=1, max_size=12)),
    "tx_datetime": ("double", st.floats(allow_nan=True, allow_infinity=True).filter(
        lambda x: not (math.isfinite(x) and float(x).is_integer()))),
    "customer_id": ("double", st.floats(0.01, 1e6).filter(lambda x: not float(x).is_integer())),
    "terminal_id": ("string", st.text(alphabet="terminal#", min_size=1, max_size=10)),
    "tx_amount": ("string", st.text(alphabet="$0123456789.,", min_size=0, max_size=10).filter(lambda s: s.strip() == "" or not _is_number(s))),
}


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


class MalformedFactory:
    """Registers the reduced/retyped writer schemas in the test's registry and builds strategies."""

    def __init__(self, registry, codec, oversize_bytes: int):
        self.codec = codec
        self.oversize_bytes = oversize_bytes
        base = builtin_schema("transaction")
        self.tx_id = codec.schema_id("transactions-value")
        self.other_ids = [codec.schema_id(s) for s in ("scores-value", "dead-letters-value", "interactions-value")]
        self.known_ids = set(registry.ids())
        self.missing_subject, self.retyped_subject = {}, {}
        for f in FIELDS:
            s = copy.deepcopy(base)
            s["fields"] = [x for x in s["fields"] if x["name"] != f]
            self.missing_subject[f] = f"e2e-missing-{f}"
            registry.register(self.missing_subject[f], s)
            s = copy.deepcopy(base)
            for x in s["fields"]:
                if x["name"] == f:
                    x["type"] = _RETYPES[f][0]
            self.retyped_subject[f] = f"e2e-retyped-{f}"
            registry.register(self.retyped_subject[f], s)
        codec.refresh()
        self.known_ids = set(registry.ids())

    def encode(self, record: dict) -> bytes:
        return self.codec.encode("transactions-value", record)

    def strategy(self):
        garbage = st.one_of(
            st.just(b""),
            st.binary(min_size=1, max_size=4),  # shorter than the header
            st.tuples(st.integers(1, 255), st.binary(max_size=64)).map(lambda t: bytes([t[0]]) + t[1]),  # bad magic
        ).map(lambda b: Bad("garbage", b))
        unknown = st.tuples(st.integers(0, 2**32 - 1).filter(lambda i: i not in self.known_ids),
                            st.binary(max_size=48)).map(
            lambda t: Bad("unknown_schema", struct.pack(">bI", 0, t[0]) + t[1]))
        truncated = st.tuples(good_records(), st.floats(0, 1, exclude_max=True)).map(self._truncate)
        wrong = st.tuples(good_records(), st.sampled_from(self.other_ids)).map(
            lambda t: Bad("wrong_schema", struct.pack(">bI", 0, t[1]) + self.encode(t[0])[5:]))
        missing = st.tuples(good_records(), st.sampled_from(FIELDS)).map(self._missing)
        mistyped = st.sampled_from(FIELDS).flatmap(
            lambda f: st.tuples(good_records(), _RETYPES[f][1]).map(lambda t, f=f: self._retyped(f, *t)))
        return st.one_of(garbage, unknown, truncated, wrong, missing, mistyped)

    def _truncate(self, t) -> Bad:
        data = self.encode(t[0])
        return Bad("truncated", data[:int(t[1] * len(data))])

    def _missing(self, t) -> Bad:
        record, f = t
        rec = {k: v for k, v in record.items() if k != f}
        return Bad("missing", self.codec.encode(self.missing_subject[f], rec), f)

    def _retyped(self, f: str, record: dict, value) -> Bad:
        rec = dict(record)
        rec[f] = value
        return Bad("mistyped", self.codec.encode(self.retyped_subject[f], rec), f)

    def oversize(self, record: dict) -> Bad:
        data = self.encode(record)
        return Bad("oversize", data + b"\x00" * (self.oversize_bytes - len(data) + 1))


def rejected_by_ingest(plan, codec, value, max_payload_bytes: int) -> str | None:
    """The ingest's verdict through its own decoder: the reason, or None if it would accept it."""
    from schemas.registry import DecodeError
    from streams.records import RecordDecoder, RecordRejected

    dec = RecordDecoder(plan, {"t": plan.fact_table}, codec.decode, (DecodeError,), max_payload_bytes)
    try:
        dec.appends("t", value)
    except RecordRejected as exc:
        return exc.reason
    return None


def rejected_by_scorer(plan, codec, value) -> str | None:
    """The scorer's verdict through its own decode + validation + tensor building."""
    from schemas.registry import DecodeError
    from schemas.values import RowError
    from scorer.pipeline import empty_windows, event_tensors, prepare_event

    try:
        _, record = codec.decode(value)
        ev = prepare_event(plan, record)
        event_tensors(plan, ev, empty_windows(plan, ev.keys))
    except DecodeError as exc:
        return exc.reason
    except (RowError, ValueError, TypeError, OverflowError) as exc:
        return f"bad_row: {exc}"
    return None
