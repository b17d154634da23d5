"""The ingest service on the real Kafka + Redis of the session stack."""
from __future__ import annotations

import struct
import time
import urllib.request

from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

from relstream.stack import free_port
from rti_store import RedisWindowStore
from schemas.dead_letter import KEEP_PAYLOAD_BYTES, dead_letter_headers, parse_dead_letter
from streams.synthetic import TRANSACTIONS_SUBJECT, produce_values, synthetic_transactions


def _samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_ingest_equals_a_single_pass_and_redelivery_is_a_noop(stack, new_topic, redis_client, plan, codec,
                                                              registry_dir, ih):
    topic, dlq = new_topic("ing", partitions=3), new_topic("ing-dlq")
    events = synthetic_transactions(3000, seed=11, n_customers=150, n_terminals=200)
    values = ih.encode_all(codec, TRANSACTIONS_SUBJECT, events)
    # the producer redelivers some records itself (at-least-once upstream): duplicates are no-ops
    sent = values + values[:300]
    keys = [str(e["customer_id"]).encode() for e in events] + [str(e["customer_id"]).encode() for e in events[:300]]
    produce_values(ih.producer(stack.kafka_bootstrap), topic, sent, keys=keys)
    ends = ih.end_offsets(stack.kafka_bootstrap, topic, 3)
    assert sum(ends.values()) == len(sent)

    store = RedisWindowStore(plan, redis_client)
    clock = [0]
    port = free_port()
    group = f"g1-{topic}"
    svc = ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store, topic, dlq, group,
                          batch_size=700, metrics_port=port, now_ns=lambda: clock[0])
    svc.start_metrics()
    run = ih.Running(svc)
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 3)
    try:
        probe.wait_for(ends)
        newest = max(e["tx_datetime"] for e in events)
        clock[0] = newest + 5 * 10**9
        time.sleep(1.2)  # one lag refresh interval
        metrics = _samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
    finally:
        stats = run.stop()
        probe.close()
    assert stats.records == len(sent) and stats.dead_letters == 0
    assert stats.interactions == 2 * len(sent)  # duplicates reach the store, which ignores them
    assert metrics[("relstream_ingest_records_total", (("topic", topic),))] == len(sent)
    assert metrics[("relstream_ingest_window_freshness_seconds", ())] == 5.0
    lags = {k: v for k, v in metrics.items() if k[0] == "relstream_ingest_consumer_lag"}
    assert len(lags) == 3 and set(lags.values()) == {0.0}
    assert metrics[("relstream_ingest_batch_seconds_count", ())] == stats.batches

    expected = ih.single_pass(plan, codec, values)
    n_windows = ih.assert_same_windows(expected, store, redis_client)
    before = {k: store.rows(*k) for k in expected.keys()}

    # redelivery of everything: a new group re-consumes from offset 0 -> identical windows
    group2 = f"g2-{topic}"
    svc2 = ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store, topic, dlq, group2, batch_size=999)
    run2 = ih.Running(svc2)
    probe2 = ih.GroupProbe(stack.kafka_bootstrap, group2, topic, 3)
    try:
        probe2.wait_for(ends)
    finally:
        stats2 = run2.stop()
        probe2.close()
    assert stats2.records == len(sent)
    assert {k: store.rows(*k) for k in expected.keys()} == before
    assert ih.assert_same_windows(expected, store, redis_client) == n_windows


def test_bad_records_go_to_the_dlq_and_good_ones_around_them_are_ingested(stack, new_topic, redis_client, plan,
                                                                         codec, registry_dir, ih):
    from schemas.registry import FileSchemaRegistry
    topic, dlq = new_topic("bad"), new_topic("bad-dlq")
    reg = FileSchemaRegistry(registry_dir)
    partial = reg.register("partial-value", {"type": "record", "name": "Partial", "fields": [
        {"name": "transaction_id", "type": "long"}, {"name": "tx_datetime", "type": "long"},
        {"name": "customer_id", "type": "long"}]})
    good = synthetic_transactions(400, seed=5)
    bad = {
        "bad_magic": b"\xff garbage bytes, not avro",
        "unknown_schema": struct.pack(">bI", 0, 424242) + b"\x02\x04\x06",
        "invalid_row": codec.encode("partial-value", {"transaction_id": 1, "tx_datetime": 2, "customer_id": 3},
                                schema_id=partial),
        "oversize": codec.encode(TRANSACTIONS_SUBJECT, good[0])[:5] + b"\x00" * 10_000,
        "undecodable": codec.encode(TRANSACTIONS_SUBJECT, good[0])[:-2],
        "empty": None,
    }
    values, bad_offsets = [], {}
    good_values = ih.encode_all(codec, TRANSACTIONS_SUBJECT, good)
    for i, v in enumerate(good_values):
        values.append(v)
        if i % 60 == 30:  # sprinkle each bad kind between good records
            reason = list(bad)[len(bad_offsets) % len(bad)]
            bad_offsets[len(values)] = reason
            values.append(bad[reason])
    produce_values(ih.producer(stack.kafka_bootstrap), topic, values, partition=0)
    assert set(bad_offsets.values()) == set(bad)

    store = RedisWindowStore(plan, redis_client)
    group = f"g-{topic}"
    svc = ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store, topic, dlq, group, batch_size=100,
                          max_payload_bytes=4096)
    run = ih.Running(svc)
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 1)
    try:
        probe.wait_for({0: len(values)})  # bad records never block the partition
    finally:
        stats = run.stop()
        probe.close()
    assert stats.dead_letters == len(bad_offsets)
    ih.assert_same_windows(ih.single_pass(plan, codec, good_values), store, redis_client)

    reader = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"read-{dlq}",
                       "auto.offset.reset": "earliest"})
    reader.subscribe([dlq])
    letters, headers = [], []
    deadline = time.monotonic() + 30
    while len(letters) < len(bad_offsets) and time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is not None and msg.error() is None:
            letters.append(parse_dead_letter(msg, codec.decode))
            headers.append(dead_letter_headers(msg))
    reader.close()
    got = {dl.offset: dl.reason for dl in letters}
    assert got == bad_offsets
    for dl, h in zip(letters, headers):
        assert (dl.source_service, dl.consumer_group, dl.topic, dl.partition) == ("ingest", group, topic, 0)
        assert dl.detail and h["reason"] == dl.reason and h["source.service"] == "ingest"
        original = values[dl.offset] or b""
        assert dl.payload_size == len(original) and dl.payload == original[:KEEP_PAYLOAD_BYTES]
        assert dl.truncated == (len(original) > KEEP_PAYLOAD_BYTES)
    row = next(dl for dl in letters if dl.reason == "invalid_row")
    assert row.detail == "transactions.terminal_id: missing field"
    for reason in bad:  # one count per dead letter, by reason
        counted = svc.metrics.registry.get_sample_value("relstream_ingest_dlq_total", {"topic": topic, "reason": reason})
        assert counted == list(bad_offsets.values()).count(reason), reason


def test_two_consumers_in_one_group_split_the_partitions(stack, new_topic, redis_client, plan, codec,
                                                         registry_dir, ih):
    topic, dlq = new_topic("split", partitions=4), new_topic("split-dlq")
    events = synthetic_transactions(4000, seed=21)
    values = ih.encode_all(codec, TRANSACTIONS_SUBJECT, events)
    prod = ih.producer(stack.kafka_bootstrap)
    produce_values(prod, topic, values[:400], keys=[str(i).encode() for i in range(400)])

    group = f"g-{topic}"
    store_a, store_b = RedisWindowStore(plan, redis_client), RedisWindowStore(plan, stack.redis_url)
    a = ih.Running(ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store_a, topic, dlq, group,
                                   batch_size=200))
    time.sleep(2.0)  # a owns all partitions; b's arrival forces a rebalance mid-stream
    b = ih.Running(ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store_b, topic, dlq, group,
                                   batch_size=200))
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 4)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (a.service.loop.assigned and b.service.loop.assigned):
            time.sleep(0.1)
        produce_values(prod, topic, values[400:], keys=[str(i).encode() for i in range(400, len(values))])
        ends = ih.end_offsets(stack.kafka_bootstrap, topic, 4)
        probe.wait_for(ends)
        owned_a, owned_b = a.service.loop.assigned, b.service.loop.assigned
    finally:
        stats_a, stats_b = a.stop(), b.stop()
        probe.close()
    assert owned_a and owned_b and not owned_a & owned_b
    assert owned_a | owned_b == {(topic, p) for p in range(4)}
    assert stats_b.records > 0 and stats_a.records > 0
    # a rebalance may hand a partition over with an uncommitted tail: redelivery, never loss
    assert stats_a.records + stats_b.records >= len(values)
    ih.assert_same_windows(ih.single_pass(plan, codec, values), store_a, redis_client)


def test_rows_the_store_refuses_are_isolated_and_dead_lettered(stack, new_topic, plan, codec, registry_dir, ih):
    """A store error that is not an outage (here: a store that refuses one event's rows) must
    not block the partition or lose the rest of the batch."""
    from rti_store import MemoryWindowStore

    class Refusing(MemoryWindowStore):
        def append(self, items):
            if any(i[2].event_id == 77 for i in items):
                raise ValueError("event 77: refused by the store")
            return super().append(items)

    topic, dlq = new_topic("refuse"), new_topic("refuse-dlq")
    events = synthetic_transactions(200, seed=6, first_id=1)
    values = ih.encode_all(codec, TRANSACTIONS_SUBJECT, events)
    produce_values(ih.producer(stack.kafka_bootstrap), topic, values, partition=0)
    store = Refusing(plan)
    group = f"g-{topic}"
    run = ih.Running(ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store, topic, dlq, group,
                                     batch_size=64))
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 1)
    try:
        probe.wait_for({0: len(values)})
    finally:
        stats = run.stop()
        probe.close()
    assert stats.dead_letters == 1 and stats.interactions == 2 * (len(values) - 1)
    expected = ih.single_pass(plan, codec, [v for e, v in zip(events, values) if e["transaction_id"] != 77])
    assert sorted(expected.keys(), key=repr) == sorted(store.keys(), key=repr)
    assert all(expected.rows(*k) == store.rows(*k) for k in expected.keys())
    reader = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"read-{dlq}",
                       "auto.offset.reset": "earliest"})
    reader.subscribe([dlq])
    msg = None
    deadline = time.monotonic() + 20
    while msg is None and time.monotonic() < deadline:
        m = reader.poll(0.5)
        msg = m if m is not None and m.error() is None else None
    reader.close()
    letter = parse_dead_letter(msg, codec.decode)
    assert letter.reason == "store_rejected" and letter.offset == 76 and letter.source_service == "ingest"
    assert "event 77" in letter.detail
