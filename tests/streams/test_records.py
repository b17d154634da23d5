"""Pure parts of ingestion: decoding records into appends or dead letters, retry, metrics."""
from __future__ import annotations

import struct

import pytest
from confluent_kafka import Message
from prometheus_client.parser import text_string_to_metric_families

from schemas.dead_letter import DLQ_SUBJECT, KEEP_PAYLOAD_BYTES
from schemas.interactions import interactions_of
from streams.dlq import DeadLetterSink
from streams.ingest import IngestSettings, consumer_config, default_topics, producer_config, scorer_owned_topics
from streams.metrics import IngestMetrics
from streams.records import RecordDecoder, decode_batch, parse_topic_tables
from kafka_io.retry import Backoff, GaveUp, retry_until
from streams.synthetic import TRANSACTIONS_SUBJECT, synthetic_transactions

TOPIC = "tx"


def _msg(value, offset, partition=0, topic=TOPIC, key=None):
    return Message(topic=topic, partition=partition, offset=offset, value=value, key=key)


@pytest.fixture
def decoder(plan, codec, decode_errors):
    return RecordDecoder(plan, {TOPIC: "transactions"}, codec.decode, decode_errors, max_payload_bytes=4096)


def test_good_records_become_the_appends_interactions_of_gives(plan, codec, decoder):
    events = synthetic_transactions(20, seed=1)
    msgs = [_msg(codec.encode(TRANSACTIONS_SUBJECT, e), i, partition=i % 2) for i, e in enumerate(events)]
    batch = decode_batch(msgs, decoder)
    expected = [a for e in events for a in interactions_of(plan, "transactions", e)]
    assert batch.appends == expected
    assert len(batch.appends) == 2 * len(events)  # one per hop of the fraud plan
    assert batch.dead_letters == []
    assert batch.next_offsets == {(TOPIC, 0): 19, (TOPIC, 1): 20}
    assert batch.newest_event_time == max(e["tx_datetime"] for e in events)
    assert [(m.offset(), s, e) for m, s, e in batch.spans][:2] == [(0, 0, 2), (1, 2, 4)]


def test_every_kind_of_bad_record_is_dead_lettered_and_good_ones_around_it_kept(plan, codec, decoder, registry_dir):
    from schemas.registry import FileSchemaRegistry
    reg = FileSchemaRegistry(registry_dir)
    # a registered schema that is not a transaction: decodes fine, lacks the plan's fields
    sid = reg.register("other-value", {"type": "record", "name": "Other", "fields": [
        {"name": "transaction_id", "type": "long"}, {"name": "tx_datetime", "type": "long"}]})
    good = synthetic_transactions(3, seed=2)
    wrong_type = codec.encode("other-value", {"transaction_id": 5, "tx_datetime": 7}, schema_id=sid)
    unknown_id = struct.pack(">bI", 0, 999_999) + b"\x02\x04"
    truncated = codec.encode(TRANSACTIONS_SUBJECT, good[0])[:-3]
    values = [codec.encode(TRANSACTIONS_SUBJECT, good[0]), b"\xde\xad\xbe\xef garbage", unknown_id,
              codec.encode(TRANSACTIONS_SUBJECT, good[1]), wrong_type, b"\x00" + b"x" * 5000, None, truncated,
              codec.encode(TRANSACTIONS_SUBJECT, good[2])]
    batch = decode_batch([_msg(v, 100 + i) for i, v in enumerate(values)], decoder)
    assert len(batch.appends) == 2 * 3
    reasons = {dl.offset: dl.reason for dl in batch.dead_letters}
    assert reasons == {101: "bad_magic", 102: "unknown_schema", 104: "invalid_row", 105: "oversize",
                       106: "empty", 107: "undecodable"}
    bad_row = next(dl for dl in batch.dead_letters if dl.reason == "invalid_row")
    assert bad_row.detail == "transactions.terminal_id: missing field"  # names the field
    assert batch.next_offsets == {(TOPIC, 0): 109}  # bad records never block the partition
    assert batch.records == len(values)


def test_bad_records_of_a_topic_the_scorer_dead_letters_are_only_counted(plan, codec, decode_errors):
    decoder = RecordDecoder(plan, {TOPIC: "transactions", "own": "transactions"}, codec.decode, decode_errors,
                            max_payload_bytes=4096, skip_dead_letters_on={TOPIC})
    good = codec.encode(TRANSACTIONS_SUBJECT, synthetic_transactions(1)[0])
    msgs = [_msg(b"\x05junk", 0), _msg(None, 1), _msg(good, 2), _msg(b"", 3), _msg(b"\x05junk", 0, topic="own")]
    batch = decode_batch(msgs, decoder)
    assert [(dl.topic, dl.reason) for dl in batch.dead_letters] == [("own", "bad_magic")]
    assert batch.skipped == {(TOPIC, "bad_magic"): 1, (TOPIC, "empty"): 2}
    assert len(batch.appends) == 2 and batch.next_offsets == {(TOPIC, 0): 4, ("own", 0): 1}


def test_ingest_leaves_dead_letters_of_shared_topics_to_the_scorer_unless_told_otherwise():
    assert scorer_owned_topics(["tx", "clicks"], "owned", ["tx"], 100, 100) == {"tx"}
    assert scorer_owned_topics(["tx", "clicks"], "all", ["tx"], 100, 100) == set()
    assert scorer_owned_topics(["clicks"], "owned", ["tx"], 100, 999) == set()  # nothing shared: limits may differ
    with pytest.raises(ValueError, match="set them equal"):
        scorer_owned_topics(["tx"], "owned", ["tx"], 100, 200)


def test_the_dead_letters_setting_is_validated():
    from pydantic import ValidationError

    from streams.ingest import IngestSection
    assert IngestSection().dead_letters == "owned"
    with pytest.raises(ValidationError, match="dead_letters"):
        IngestSection(dead_letters="some")


def test_unmapped_topic_is_dead_lettered(codec, decoder):
    batch = decode_batch([_msg(codec.encode(TRANSACTIONS_SUBJECT, synthetic_transactions(1)[0]), 0,
                               topic="elsewhere")], decoder)
    assert [dl.reason for dl in batch.dead_letters] == ["unmapped_topic"]


def test_decoder_rejects_unknown_table(plan, codec, decode_errors):
    with pytest.raises(ValueError, match="topics.t: table 'nope'"):
        RecordDecoder(plan, {"t": "nope"}, codec.decode, decode_errors)


def test_topic_table_specs():
    assert parse_topic_tables(["a", "b=transactions"]) == {"a": "a", "b": "transactions"}
    with pytest.raises(ValueError, match="mapped twice"):
        parse_topic_tables(["a=x", "a=y"])
    with pytest.raises(ValueError, match="TOPIC=TABLE"):
        parse_topic_tables(["=x"])


def test_default_topics_map_to_the_single_interaction_table(plan):
    assert default_topics(plan, ["t1", "t2"]) == {"t1": "transactions", "t2": "transactions"}


def test_the_sink_builds_the_shared_entry_with_ingest_and_its_group(codec):
    # (what the broker receives is checked on the real stack in test_ingest_integration.py)
    from streams.records import DeadLetter
    sink = DeadLetterSink(producer=None, topic="dlq", encode=codec.encode, consumer_group="my-group",
                          now_ns=lambda: 123)
    entry = sink.entry(DeadLetter("t", 3, 42, "oversize", "too big", b"y" * 10_000, b"k", 1))
    assert (entry.source_service, entry.consumer_group, entry.source, entry.key) == ("ingest", "my-group",
                                                                                     ("t", 3, 42), b"k")
    assert entry.truncated and entry.payload == b"y" * KEEP_PAYLOAD_BYTES and entry.payload_size == 10_000
    assert entry.failed_at == 123
    subject, record = codec.decode(codec.encode(DLQ_SUBJECT, entry.to_record()))
    assert subject == DLQ_SUBJECT and record["source_service"] == "ingest" and record["payload_size"] == 10_000


def test_client_configs_force_the_delivery_contract():
    s = IngestSettings(topics={"t": "transactions"}, dlq_topic="d", group_id="g")
    conf = consumer_config({"bootstrap.servers": "x", "security.protocol": "SASL_SSL"}, s, {"fetch.min.bytes": 1})
    assert conf["enable.auto.commit"] is False and conf["group.id"] == "g"
    assert conf["security.protocol"] == "SASL_SSL" and conf["fetch.min.bytes"] == 1
    with pytest.raises(ValueError, match="enable.auto.commit"):
        consumer_config({"enable.auto.commit": "true"}, s)
    prod = producer_config({"bootstrap.servers": "x", "session.timeout.ms": 6000, "sasl.mechanism": "PLAIN"})
    assert prod["acks"] == "all" and prod["enable.idempotence"] is True
    assert "session.timeout.ms" not in prod and prod["sasl.mechanism"] == "PLAIN"


def test_retry_backs_off_until_success_and_gives_up_on_request():
    slept, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("down")
        return "ok"

    assert retry_until(flaky, what="x", backoff=Backoff(0.1, 0.3, 2.0, jitter=0), sleep=slept.append) == "ok"
    assert slept == [0.1, 0.2, 0.3]
    with pytest.raises(GaveUp):
        retry_until(lambda: 1 / 0, what="x", give_up=lambda: True, sleep=slept.append)
    with pytest.raises(KeyError):  # not a retryable error: propagates at once
        retry_until(lambda: {}["k"], what="x", retry_on=(ConnectionError,), sleep=slept.append)


def test_metrics_freshness_uses_the_injected_clock():
    now = [10 * 10**9]
    m = IngestMetrics(now_ns=lambda: now[0])
    assert m.freshness_seconds() != m.freshness_seconds()  # NaN before the first event
    m.note_event_time(4 * 10**9)
    m.note_event_time(3 * 10**9)  # older: the newest stays
    now[0] = 12 * 10**9
    m.records.labels("t").inc(5)
    m.set_lag("t", 0, 7)
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    assert families["relstream_ingest_window_freshness_seconds"].samples[0].value == 8.0
    assert families["relstream_ingest_consumer_lag"].samples[0].value == 7
    assert families["relstream_ingest_records"].samples[0].value == 5
