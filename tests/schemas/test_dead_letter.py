"""The dead-letter vocabulary, classifier and entry format shared by ingest and the scorer."""
from __future__ import annotations

import logging
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import dead_letter as dl
from schemas.interactions import interactions_of
from schemas.plan_loading import builtin_plan
from schemas.registry import AvroCodec, FileSchemaRegistry, backward_problems, builtin_schema, load_builtin_schemas

TX = {"transaction_id": 1001, "tx_datetime": 1_523_361_600_000_000_000, "customer_id": 42, "terminal_id": 7,
      "tx_amount": 29.5}
LIMIT = 4096


@pytest.fixture(scope="module")
def plan():
    return builtin_plan("fraud")


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    reg = FileSchemaRegistry(tmp_path_factory.mktemp("registry"))
    load_builtin_schemas(reg)
    partial = builtin_schema("transaction")
    partial["fields"] = [f for f in partial["fields"] if f["name"] != "terminal_id"]
    reg.register("partial-value", partial)
    return AvroCodec(reg)


def ingest_check(plan):
    return lambda record: interactions_of(plan, "transactions", record)


def good(codec) -> bytes:
    return codec.encode("transactions-value", TX)


def bad_values(codec) -> dict[str, bytes | None]:
    """One record per reason check_record can give."""
    data = good(codec)
    return {
        "empty": None,
        "oversize": data + b"\x00" * LIMIT,
        "too_short": data[:3],
        "bad_magic": b"\x07" + data[1:],
        "unknown_schema": struct.pack(">bI", 0, 999_999) + data[5:],
        "undecodable": data[:-2],
        "invalid_row": codec.encode("partial-value", {k: v for k, v in TX.items() if k != "terminal_id"}),
    }


def test_every_record_reason_has_a_record_that_gets_it(codec, plan):
    values = bad_values(codec)
    assert set(values) == set(dl.RECORD_REASONS)
    for reason, value in values.items():
        with pytest.raises(dl.RecordRejected) as rej:
            dl.check_record(value, codec.decode, LIMIT, ingest_check(plan))
        assert rej.value.reason == reason, (reason, rej.value)
        assert rej.value.detail and not rej.value.detail.startswith(f"{reason}:"), rej.value.detail
    with pytest.raises(dl.RecordRejected, match="^empty"):
        dl.check_record(b"", codec.decode, LIMIT)


def test_a_good_record_returns_what_the_row_check_returns(codec, plan):
    appends = dl.check_record(good(codec), codec.decode, LIMIT, ingest_check(plan))
    assert appends == interactions_of(plan, "transactions", TX)
    assert dl.check_record(good(codec), codec.decode, LIMIT) == TX
    assert dl.reason_of(good(codec), codec.decode, LIMIT, ingest_check(plan)) is None


def test_invalid_row_names_the_field_and_any_value_error_of_the_row_check_counts(codec, plan):
    value = bad_values(codec)["invalid_row"]
    with pytest.raises(dl.RecordRejected) as rej:
        dl.check_record(value, codec.decode, LIMIT, ingest_check(plan))
    assert "terminal_id" in rej.value.detail

    def refuse(_record):
        raise OverflowError("amount too large")
    with pytest.raises(dl.RecordRejected) as rej:
        dl.check_record(good(codec), codec.decode, LIMIT, refuse)
    assert rej.value.reason == dl.INVALID_ROW and rej.value.detail == "OverflowError: amount too large"


def test_a_bug_in_the_row_check_is_not_a_dead_letter(codec):
    def buggy(_record):
        raise KeyError("not a content problem")
    with pytest.raises(KeyError):
        dl.check_record(good(codec), codec.decode, LIMIT, buggy)


def test_the_size_limit_is_checked_before_decoding(codec):
    # a 300 KB value that is not Avro either: the same reason whatever the codec's own limit
    value = b"\x01" * 300_000
    big_codec = AvroCodec(codec.registry, max_bytes=1 << 20)
    assert dl.reason_of(value, big_codec.decode, 256 * 1024) == dl.OVERSIZE
    assert dl.reason_of(value, big_codec.decode, 1 << 20) == dl.BAD_MAGIC


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.none(), st.binary(max_size=64), st.binary(min_size=LIMIT - 8, max_size=LIMIT + 8),
                       st.binary(max_size=48).map(lambda b: b"\x00\x00\x00\x00\x01" + b)))
def test_any_bytes_get_exactly_one_reason_and_the_same_truncation_in_both_services(codec, plan, value):
    reasons = []
    for _ in range(2):  # deterministic: the same bytes, the same verdict
        try:
            dl.check_record(value, codec.decode, LIMIT, ingest_check(plan))
            reasons.append(None)
        except dl.RecordRejected as rej:
            assert rej.reason in dl.RECORD_REASONS
            reasons.append(rej.reason)
    assert reasons[0] == reasons[1]
    reason = reasons[0] or dl.STORE_REJECTED  # a good record can still be refused later
    entries = [dl.dead_letter_entry(service=service, group=f"{service}-group", topic="tx", partition=1, offset=9,
                                    reason=reason, detail="d", value=value, failed_at=1)
               for service in dl.SERVICES]
    ingest, score = entries
    assert ingest.payload == score.payload == (value or b"")[:dl.KEEP_PAYLOAD_BYTES]
    assert ingest.payload_size == score.payload_size == len(value or b"")
    assert ingest.truncated == score.truncated == (len(value or b"") > dl.KEEP_PAYLOAD_BYTES)


def test_the_entry_says_who_where_and_why_and_round_trips(codec):
    value = b"\x05" * 3000
    entry = dl.dead_letter_entry(service="score", group="relstream-scorer", topic="tx", partition=2, offset=77,
                                 reason=dl.BAD_MAGIC, detail="magic byte is 5, expected 0", value=value, key=b"k",
                                 failed_at=123)
    assert entry.truncated and len(entry.payload) == 1024 and entry.payload_size == 3000
    wire = codec.encode(dl.DLQ_SUBJECT, entry.to_record())

    class Msg:  # what parse_dead_letter reads of a consumed message
        def value(self):
            return wire

        def offset(self):
            return 0

        def headers(self):
            return entry.headers()

    assert dl.parse_dead_letter(Msg(), codec.decode) == entry
    headers = dl.dead_letter_headers(Msg())
    assert headers == {"source.service": "score", "source.group": "relstream-scorer", "source.topic": "tx",
                       "source.partition": "2", "source.offset": "77", "source.size": "3000",
                       "reason": "bad_magic", "detail": "magic byte is 5, expected 0", "truncated": "1"}


def test_entries_outside_the_vocabulary_cannot_be_built():
    with pytest.raises(ValueError, match="unknown reason 'bad_row'"):
        dl.dead_letter_entry(service="ingest", group="g", topic="t", partition=0, offset=0, reason="bad_row",
                             detail="x", value=b"x")
    with pytest.raises(ValueError, match="unknown service"):
        dl.dead_letter_entry(service="serve", group="g", topic="t", partition=0, offset=0, reason=dl.EMPTY,
                             detail="x", value=None)


def test_one_log_line_per_dead_letter(caplog):
    entry = dl.dead_letter_entry(service="ingest", group="g1", topic="tx", partition=0, offset=5,
                                 reason=dl.INVALID_ROW, detail='transactions.terminal_id: missing "field"\nx',
                                 value=b"abc", failed_at=1)
    with caplog.at_level(logging.WARNING, logger="relstream.dead_letters"):
        dl.log_dead_letter(entry)
    [rec] = caplog.records
    assert rec.name == "relstream.dead_letters" and "\n" not in rec.getMessage()
    assert rec.getMessage() == ('dead letter service=ingest group=g1 reason=invalid_row topic=tx partition=0 '
                                'offset=5 size=3 detail="transactions.terminal_id: missing \\"field\\"\\nx"')


# the DeadLetter schema before source_service, consumer_group, payload_size and detail (was: error)
OLD_DEAD_LETTER = {
    "type": "record", "name": "DeadLetter", "namespace": "relstream.events",
    "fields": [{"name": "source_topic", "type": "string"}, {"name": "source_partition", "type": "int"},
               {"name": "source_offset", "type": "long"}, {"name": "reason", "type": "string"},
               {"name": "error", "type": "string"}, {"name": "payload", "type": "bytes"},
               {"name": "key", "type": ["null", "bytes"], "default": None}, {"name": "failed_at", "type": "long"}]}


def test_the_new_schema_reads_entries_written_before_it(tmp_path):
    assert backward_problems(reader=builtin_schema("dead_letter"), writer=OLD_DEAD_LETTER) == []
    reg = FileSchemaRegistry(tmp_path / "registry")
    reg.register(dl.DLQ_SUBJECT, OLD_DEAD_LETTER)  # a registry from before: the new version is accepted
    load_builtin_schemas(reg)
    assert len(reg.versions(dl.DLQ_SUBJECT)) == 2
    record = {"source_topic": "t", "source_partition": 0, "source_offset": 3, "reason": "bad_magic",
              "error": "magic byte is 1", "payload": b"\x01", "key": None, "failed_at": 9}
    entry = dl.DeadLetterEntry.from_record(record)
    assert (entry.detail, entry.payload_size, entry.source_service) == ("magic byte is 1", 1, "")
