"""Columnar Avro decoding gives, record for record, what the codec gives: the same appends, and
for a bad record the same dead letter (reason and detail). Records it cannot decode exactly are
left to the codec, so good, damaged and foreign records are mixed here on purpose."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.registry import FileSchemaRegistry
from streams.columnar import ColumnarDecoder, flat_layout
from streams.records import RecordDecoder, decode_batch
from streams.synthetic import TRANSACTIONS_SUBJECT

I64 = st.integers(-(2**63), 2**63 - 1)
TRANSACTION = st.fixed_dictionaries({
    "transaction_id": I64, "tx_datetime": I64, "customer_id": st.integers(-5, 5) | I64,
    "terminal_id": st.integers(-5, 5) | I64, "tx_amount": st.floats(width=32)})


@pytest.fixture
def schemas(registry_dir):
    reg = FileSchemaRegistry(registry_dir)
    narrow = reg.register("narrow-value", {"type": "record", "name": "Narrow", "fields": [  # int, double, extra field
        {"name": "transaction_id", "type": "int"}, {"name": "note", "type": "long"},
        {"name": "tx_datetime", "type": "long"}, {"name": "customer_id", "type": "long"},
        {"name": "terminal_id", "type": "long"}, {"name": "tx_amount", "type": "double"}]})
    partial = reg.register("partial-value", {"type": "record", "name": "Partial", "fields": [  # lacks columns
        {"name": "transaction_id", "type": "long"}, {"name": "tx_datetime", "type": "long"}]})
    texty = reg.register("texty-value", {"type": "record", "name": "Texty", "fields": [  # not flat numbers
        {"name": "transaction_id", "type": "long"}, {"name": "tx_datetime", "type": "long"},
        {"name": "customer_id", "type": "string"}, {"name": "terminal_id", "type": "long"},
        {"name": "tx_amount", "type": "float"}]})
    nullable = reg.register("nullable-value", {"type": "record", "name": "Nullable", "fields": [  # a union
        {"name": "transaction_id", "type": "long"}, {"name": "tx_datetime", "type": "long"},
        {"name": "customer_id", "type": ["null", "long"]}, {"name": "terminal_id", "type": "long"},
        {"name": "tx_amount", "type": "float"}]})
    return reg, {"narrow": narrow, "partial": partial, "texty": texty, "nullable": nullable}


def damaged(data, value: bytes) -> bytes:
    how = data.draw(st.sampled_from(["cut", "extend", "flip", "header"]))
    if how == "cut":
        return value[:data.draw(st.integers(0, len(value) - 1))]
    if how == "extend":
        return value + data.draw(st.binary(min_size=1, max_size=12))
    if how == "flip":
        i = data.draw(st.integers(0, len(value) - 1))
        return value[:i] + bytes([data.draw(st.integers(0, 255))]) + value[i + 1:]
    return struct.pack(">bI", data.draw(st.sampled_from([0, 1])), data.draw(st.integers(0, 2**32 - 1))) + value[5:]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_columnar_decoding_equals_the_codec_record_for_record(plan, codec, decode_errors, schemas, data):
    reg, ids = schemas
    values = []
    for _ in range(data.draw(st.integers(0, 30))):
        kind = data.draw(st.sampled_from(["good", "good", "good", "damaged", "narrow", "partial", "texty", "nullable",
                                                "junk"]))
        tx = data.draw(TRANSACTION)
        if kind in ("good", "damaged"):
            value = codec.encode(TRANSACTIONS_SUBJECT, tx)
            values.append(damaged(data, value) if kind == "damaged" else value)
        elif kind == "narrow":
            values.append(codec.encode("narrow-value", {**tx, "transaction_id": tx["transaction_id"] % 2**31,
                                                        "note": 7, "tx_amount": float(tx["tx_amount"])},
                                       schema_id=ids["narrow"]))
        elif kind == "partial":
            values.append(codec.encode("partial-value", tx, schema_id=ids["partial"]))
        elif kind == "nullable":
            values.append(codec.encode("nullable-value", {**tx, "customer_id": data.draw(st.none() | I64)},
                                       schema_id=ids["nullable"]))
        elif kind == "texty":
            values.append(codec.encode("texty-value", {**tx, "customer_id": "c"}, schema_id=ids["texty"]))
        else:
            values.append(data.draw(st.sampled_from([None, b""]) | st.binary(max_size=40)))
    msgs = [Message(topic="tx", partition=i % 2, offset=i, value=v) for i, v in enumerate(values)]
    max_bytes = data.draw(st.sampled_from([4096, 30]))
    plain = RecordDecoder(plan, {"tx": "transactions"}, codec.decode, decode_errors, max_payload_bytes=max_bytes)
    columnar = RecordDecoder(plan, {"tx": "transactions"}, codec.decode, decode_errors, max_payload_bytes=max_bytes,
                             columnar=ColumnarDecoder(reg, max_bytes))
    want, got = decode_batch(msgs, plain), decode_batch(msgs, columnar)
    assert got.appends == want.appends
    assert [(m.offset(), s, e) for m, s, e in got.spans] == [(m.offset(), s, e) for m, s, e in want.spans]
    assert [(d.offset, d.reason, d.detail) for d in got.dead_letters] == \
           [(d.offset, d.reason, d.detail) for d in want.dead_letters]
    assert got.next_offsets == want.next_offsets and got.newest_event_time == want.newest_event_time
    assert got.window_rows == len(want.appends)


def test_good_transactions_take_the_columnar_path(plan, codec, registry_dir):
    from streams.synthetic import synthetic_transactions

    events = synthetic_transactions(50, seed=3)
    values = [codec.encode(TRANSACTIONS_SUBJECT, e) for e in events]
    rows, cols = ColumnarDecoder(FileSchemaRegistry(registry_dir), 4096).decode(values, plan.interaction_columns["transactions"])
    assert rows.tolist() == list(range(50))
    assert cols["customer_id"].tolist() == [e["customer_id"] for e in events]
    assert np.array_equal(cols["tx_amount"], np.array([e["tx_amount"] for e in events], np.float32))


def test_only_flat_numeric_records_have_a_layout():
    assert flat_layout({"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"},
                                                                  {"name": "b", "type": {"type": "double"}}]})
    for kind in ("string", "boolean", ["null", "long"], {"type": "long", "logicalType": "timestamp-millis"}):
        assert flat_layout({"type": "record", "name": "R", "fields": [{"name": "a", "type": kind}]}) is None


def test_a_column_typed_differently_by_two_schemas_keeps_each_value_s_type(plan, codec, registry_dir):
    """A batch mixing good records with records whose schema makes tx_datetime a double: the good
    rows keep integer times (and their windows), the others reach the per-row check as floats,
    which refuses them with the codec path's message."""
    from streams.synthetic import synthetic_transactions

    reg = FileSchemaRegistry(registry_dir)
    retyped = reg.register("retyped-value", {"type": "record", "name": "Retyped", "fields": [
        {"name": "transaction_id", "type": "long"}, {"name": "tx_datetime", "type": "double"},
        {"name": "customer_id", "type": "long"}, {"name": "terminal_id", "type": "long"},
        {"name": "tx_amount", "type": "float"}]})
    events = synthetic_transactions(6, seed=5)
    values = [codec.encode(TRANSACTIONS_SUBJECT, e) for e in events]
    odd = {**events[0], "transaction_id": 99, "tx_datetime": 1.5e18}
    values.insert(3, reg_encode(reg, retyped, odd))
    rows, cols = ColumnarDecoder(reg, 4096).decode(values, plan.interaction_columns["transactions"])
    times = cols["tx_datetime"].tolist()
    assert rows.tolist() == list(range(7))
    assert [type(t) for t in times] == [int, int, int, float, int, int, int]
    assert times[:3] + times[4:] == [e["tx_datetime"] for e in events]


def reg_encode(reg, schema_id: int, record: dict) -> bytes:
    import io

    import fastavro

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(reg.schema(schema_id)), record)
    return struct.pack(">bI", 0, schema_id) + buf.getvalue()
