"""File schema registry, BACKWARD compatibility and the Confluent wire format."""
from __future__ import annotations

import copy
import io
import json
import multiprocessing as mp
import re
import struct

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.registry import (AvroCodec, DecodeError, EncodeError, FileSchemaRegistry, IncompatibleSchemaError,
                              SchemaRegistryError, _avro_failure, backward_problems, builtin_schema,
                              load_builtin_schemas)

TX = {"transaction_id": 1001, "tx_datetime": 1_523_361_600_000_000_000, "customer_id": 42, "terminal_id": 7,
      "tx_amount": 29.5}


@pytest.fixture
def reg(tmp_path):
    return FileSchemaRegistry(tmp_path / "registry")


@pytest.fixture
def codec(reg):
    load_builtin_schemas(reg)
    return AvroCodec(reg, max_bytes=4096)


def test_builtin_schemas_register_once(reg):
    ids = load_builtin_schemas(reg)
    assert set(ids) == {"transaction", "interaction", "score", "dead_letter", "purchase_line", "recommendation",
                        "transaction_label"}
    assert len(set(ids.values())) == 7
    assert load_builtin_schemas(reg) == ids  # identical schema -> same id, no new version
    assert reg.versions("transactions-value") == [ids["transaction"]]
    sid, schema = reg.latest("transactions-value")
    assert sid == ids["transaction"] and schema == builtin_schema("transaction")
    assert "tx_fraud" not in {f["name"] for f in schema["fields"]}  # labels never travel live


def test_same_schema_under_two_subjects_shares_the_id(reg):
    a = reg.register("a-value", builtin_schema("score"))
    b = reg.register("b-value", builtin_schema("score"))
    assert a == b and reg.subjects_of(a) == ["a-value", "b-value"]


def test_wire_format_is_confluent(codec, reg):
    data = codec.encode("transactions-value", TX)
    sid = reg.latest("transactions-value")[0]
    assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == sid
    # the body is plain schemaless Avro: any Avro reader with the schema reads it
    body = fastavro.schemaless_reader(io.BytesIO(data[5:]), fastavro.parse_schema(reg.schema(sid)))
    assert body == TX
    assert codec.decode(data) == ("transactions-value", TX)


def test_round_trips_of_every_builtin(codec):
    records = {
        "interactions-value": {"event_id": "cj-1", "event_type": "add_to_cart", "event_time": 5,
                               "household_id": 1, "product_id": 2, "quantity": 3, "sales_value": 1.5},
        "scores-value": {"event_id": "1001", "entity_ids": {"customer_id": 42, "terminal_id": 7}, "score": 0.25,
                         "model_name": "fraud", "model_version": "3", "latency_ms": 1.5,
                         "degraded": ["embedding:terminal_id"], "cold_start": [], "scored_at": 9},
        "dead-letters-value": {"source_service": "score", "consumer_group": "g", "source_topic": "t",
                               "source_partition": 0, "source_offset": 12, "reason": "bad_magic",
                               "detail": "magic byte is 1", "payload": b"\x01\x02", "payload_size": 2, "key": None,
                               "failed_at": 3},
    }
    for subject, record in records.items():
        assert codec.decode(codec.encode(subject, record)) == (subject, record)


def test_encode_errors_name_the_field(codec):
    with pytest.raises(EncodeError, match="terminal_id"):
        codec.encode("transactions-value", {k: v for k, v in TX.items() if k != "terminal_id"})
    with pytest.raises(EncodeError, match="customer_id"):
        codec.encode("transactions-value", {**TX, "customer_id": "forty-two"})
    with pytest.raises(SchemaRegistryError, match="unknown subject"):
        codec.encode("nope-value", TX)


@pytest.mark.parametrize("mangle, reason", [
    (lambda d: b"", "too_short"),
    (lambda d: d[:4], "too_short"),
    (lambda d: b"\x01" + d[1:], "bad_magic"),
    (lambda d: b"\x00" + struct.pack(">I", 999) + d[5:], "unknown_schema"),
    (lambda d: d[:-2], "invalid_body"),
    (lambda d: d + b"\x00", "invalid_body"),
    (lambda d: d[:5] + b"\xff" * 12, "invalid_body"),
    (lambda d: d + b"\x00" * 5000, "oversize"),
    (lambda d: "text", "not_bytes"),
])
def test_decode_errors_have_a_reason(codec, mangle, reason):
    data = codec.encode("transactions-value", TX)
    with pytest.raises(DecodeError) as err:
        codec.decode(mangle(data))
    assert err.value.reason == reason and reason in str(err.value)


def test_garbage_never_escapes_as_another_exception(codec):
    import random
    rng = random.Random(5)
    good = codec.encode("interactions-value", {"event_id": "x", "event_type": "view", "event_time": 1,
                                              "household_id": 1, "product_id": 2, "quantity": 1,
                                              "sales_value": 0.0})
    for _ in range(500):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            codec.decode(bytes(blob[:rng.randint(0, len(blob))]))
        except DecodeError:
            pass


def test_backward_compatible_evolution(reg):
    base = builtin_schema("transaction")
    v1 = reg.register("tx", base)
    added = copy.deepcopy(base)
    added["fields"].append({"name": "merchant_category", "type": "int", "default": 0})
    v2 = reg.register("tx", added)
    promoted = copy.deepcopy(added)
    promoted["fields"][4]["type"] = "double"  # float -> double is an Avro promotion
    v3 = reg.register("tx", promoted)
    removed = copy.deepcopy(promoted)
    removed["fields"] = [f for f in removed["fields"] if f["name"] != "terminal_id"]  # readers may drop fields
    v4 = reg.register("tx", removed)
    assert reg.versions("tx") == [v1, v2, v3, v4] and len({v1, v2, v3, v4}) == 4
    # old data decodes with its own writer schema id, whatever the latest is
    codec = AvroCodec(reg)
    old = codec.encode("tx", TX, schema_id=v1)
    assert codec.decode(old) == ("tx", TX)


def test_incompatible_changes_are_rejected_naming_the_field(reg):
    base = builtin_schema("transaction")
    reg.register("tx", base)
    no_default = copy.deepcopy(base)
    no_default["fields"].append({"name": "merchant_category", "type": "int"})
    with pytest.raises(IncompatibleSchemaError, match="merchant_category"):
        reg.register("tx", no_default)
    retyped = copy.deepcopy(base)
    retyped["fields"][4]["type"] = "string"
    with pytest.raises(IncompatibleSchemaError, match="tx_amount.*'float' to 'string'"):
        reg.register("tx", retyped)
    narrowed = copy.deepcopy(base)
    narrowed["fields"][0]["type"] = "int"  # long -> int is not a promotion
    with pytest.raises(IncompatibleSchemaError, match="transaction_id"):
        reg.register("tx", narrowed)
    assert len(reg.versions("tx")) == 1


def test_backward_rules_for_nested_types():
    enum_w = {"type": "enum", "name": "E", "symbols": ["a", "b"]}
    assert backward_problems({"type": "enum", "name": "E", "symbols": ["a", "b", "c"]}, enum_w) == []
    assert backward_problems({"type": "enum", "name": "E", "symbols": ["a"]}, enum_w)
    assert backward_problems({"type": "enum", "name": "E", "symbols": ["a"], "default": "a"}, enum_w) == []
    assert backward_problems(["null", "long"], "int") == []
    assert backward_problems("long", ["null", "long"])  # null branch cannot be read
    assert backward_problems({"type": "array", "items": "double"}, {"type": "array", "items": "float"}) == []
    assert backward_problems({"type": "map", "values": "int"}, {"type": "map", "values": "long"})
    rec = lambda fields: {"type": "record", "name": "R", "fields": fields}  # noqa: E731
    inner_w = rec([{"name": "x", "type": rec([{"name": "y", "type": "int"}])}])
    inner_r = rec([{"name": "x", "type": rec([{"name": "y", "type": "string"}])}])
    problems = backward_problems(inner_r, inner_w)
    assert problems and "x.y" in problems[0]
    renamed = rec([{"name": "z", "type": "int", "aliases": ["y"]}])
    assert backward_problems(renamed, rec([{"name": "y", "type": "int"}])) == []


def test_invalid_schemas_and_subjects(reg):
    with pytest.raises(SchemaRegistryError, match="not a valid Avro schema"):
        reg.register("x", {"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]})
    with pytest.raises(SchemaRegistryError, match="subject"):
        reg.register("../escape", builtin_schema("score"))
    with pytest.raises(SchemaRegistryError, match="unknown id"):
        reg.schema(12345)


def _register_many(path, n, out):
    reg = FileSchemaRegistry(path)
    ids = []
    for i in range(n):
        schema = {"type": "record", "name": f"R{i}", "fields": [{"name": "a", "type": "long"}]}
        ids.append(reg.register(f"s{i}", schema))
    out.put(ids)


def test_several_processes_agree_on_ids(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_register_many, args=(tmp_path / "r", 15, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results[0] == results[1] == results[2]
    reg = FileSchemaRegistry(tmp_path / "r")
    assert len(reg.ids()) == 15 and len(set(results[0])) == 15
    for i, sid in enumerate(results[0]):
        assert reg.versions(f"s{i}") == [sid]
        json.dumps(reg.schema(sid))  # every file is complete JSON


def test_decode_errors_are_plain_words_without_python_internals(codec):
    internals = re.compile(r"object at 0x|<class |\b(IndexError|EOFError|ValueError|TypeError|StopIteration)\b")
    good = codec.encode("transactions-value", {"transaction_id": 1, "tx_datetime": 10**18, "customer_id": 1,
                                               "terminal_id": 2, "tx_amount": 1.0})
    header = good[:5]

    @settings(max_examples=200, deadline=None)
    @given(body=st.binary(max_size=40))
    def check(body):
        try:
            codec.decode(header + body)
        except DecodeError as exc:
            assert not internals.search(str(exc)), str(exc)

    check()
    assert "object at 0x" not in _avro_failure(ValueError("cannot read from <_io.BytesIO object at 0x7f3a2c>"))
    assert "truncated" in _avro_failure(EOFError())
