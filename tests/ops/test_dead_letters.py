"""Dead letters when `relstream ingest` and `relstream score` consume the same topic.

The real services run as subprocesses on the session stack with the fraud configuration: the
transactions topic holds the facts *and* the interactions, so both consume it. Malformed records
of every kind are produced to it, and the same bytes to a second topic only ingest consumes.

Ownership rule under test (ingest.dead_letters: owned, the default): a topic `relstream score`
consumes is dead-lettered by the scorer only -- ingest skips its bad records and counts them --
while ingest dead-letters the topics it alone consumes. So every bad record has exactly one entry,
written by its owning service, and the entries of the two services for the same bytes carry the
same reason and the same truncated payload.
"""
from __future__ import annotations

import time
from collections import Counter

import pytest

from relstream.demo.events import read_topic, wait_caught_up
from schemas.dead_letter import KEEP_PAYLOAD_BYTES, REASONS, dead_letter_headers, parse_dead_letter
from schemas.plan_loading import builtin_plan
from schemas.registry import builtin_schema
from tests.ops import services as svc
from tests.scorer.conftest import load_test_model

pytestmark = pytest.mark.timeout(420)


def malformed_records(codec) -> list[tuple[str, bytes | None]]:
    """(expected reason, value): several records of every reason the shared classifier gives."""
    good = svc.transaction_rows(1, 1_700_000_000_000_000_000)[0]
    wire = codec.encode("transactions-value", good)
    partial = builtin_schema("transaction")
    partial["fields"] = [f for f in partial["fields"] if f["name"] != "terminal_id"]
    codec.registry.register("ops-dlq-partial-value", partial)
    codec.refresh()
    missing_field = codec.encode("ops-dlq-partial-value", {k: v for k, v in good.items() if k != "terminal_id"})
    other_stream = codec.encode("interactions-value", {"event_id": "e1", "event_type": "view", "event_time": 1,
                                                       "household_id": 1, "product_id": 2})
    return [
        ("empty", None), ("empty", b""),
        ("too_short", b"\x00\x01"), ("too_short", wire[:4]),
        ("bad_magic", b"\x07 not avro at all"), ("bad_magic", b"{\"json\": true}"),
        # 300 KB of garbage: the case where the services used to disagree (oversize vs bad_magic)
        ("oversize", b"\x01" * 300_000), ("oversize", wire + b"\x00" * (256 * 1024)),
        ("unknown_schema", b"\x00\x00\x0f\x42\x3f" + wire[5:]),
        ("undecodable", wire[:-3]), ("undecodable", wire + b"\x00"),
        ("invalid_row", missing_field), ("invalid_row", other_stream),
    ]


def produce(bootstrap: str, topic: str, values) -> dict[tuple[int, int], int]:
    """Produce ``values`` in order; returns {(partition, offset): index}."""
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                         "message.max.bytes": 2_000_000})
    where: dict[tuple[int, int], int] = {}
    for i, value in enumerate(values):
        def on_delivery(err, msg, i=i):
            assert err is None, err
            where[(msg.partition(), msg.offset())] = i
        producer.produce(topic, value=value, key=str(i % 5).encode(), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert len(where) == len(values)
    return where


def counter_values(text: str, name: str) -> dict[tuple[str, str], float]:
    """{(topic, reason): value} of a counter in a /metrics exposition."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[(s.labels["topic"], s.labels["reason"])] = s.value
    return out


def scrape(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_one_dead_letter_per_bad_record_from_its_owning_service(stack, tmp_path):
    model = load_test_model(builtin_plan("fraud"), stack)
    cfg = svc.ServiceConfig(stack, tmp_path / "svc", model_name=model)
    shared = cfg.topics["facts"]  # == the interactions topic: ingest and score both consume it
    ingest_only = f"ops-clicks-{cfg.tag}"
    ingest_group, score_group = f"ops-ingest-{cfg.tag}", f"ops-score-{cfg.tag}"
    config = cfg.write(ingest={"topics": {shared: "transactions", ingest_only: "transactions"}})
    t = cfg.topics
    svc.create_topics(stack.kafka_bootstrap, [shared, ingest_only, t["scores"], t["dlq"]], partitions=2)

    codec = svc.codec_for(cfg)
    bad = malformed_records(codec)
    goods = svc.transaction_rows(12, time.time_ns() - 60 * 10**9)
    # the bad records between good ones, on both topics (same bytes)
    values = [codec.encode("transactions-value", r) for r in goods[:6]] + [v for _, v in bad] + \
        [codec.encode("transactions-value", r) for r in goods[6:]]
    reason_at = {6 + i: reason for i, (reason, _) in enumerate(bad)}
    positions = {shared: produce(stack.kafka_bootstrap, shared, values),
                 ingest_only: produce(stack.kafka_bootstrap, ingest_only, values)}

    ingest, ingest_port = svc.start_ingest(config, tmp_path)
    score, score_port = svc.start_score(config, tmp_path)
    try:
        for s, port in ((ingest, ingest_port), (score, score_port)):
            s.wait_http(svc.metrics_url(port), timeout=120)

        def alive():
            assert ingest.alive() and score.alive(), f"{ingest.tail()}\n{score.tail()}"
        wait_caught_up(stack.kafka_bootstrap, ingest_group, [shared, ingest_only], 120, check=alive)
        wait_caught_up(stack.kafka_bootstrap, score_group, [shared], 120, check=alive)
        ingest_metrics = scrape(svc.metrics_url(ingest_port))
        score_metrics = scrape(svc.metrics_url(score_port))
        scores = read_topic(stack.kafka_bootstrap, t["scores"], timeout_s=20)
        dlq_messages = read_topic(stack.kafka_bootstrap, t["dlq"], timeout_s=20)
    finally:
        ingest.stop()
        score.stop()

    assert len(scores) == len(goods), f"{len(scores)} scores for {len(goods)} good records\n{score.tail()}"
    entries = [(parse_dead_letter(m, codec.decode), dead_letter_headers(m)) for m in dlq_messages]
    by_source: dict[tuple[str, int, int], list] = {}
    for entry, headers in entries:
        by_source.setdefault(entry.source, []).append((entry, headers))
    repeated = {src: len(v) for src, v in by_source.items() if len(v) > 1}
    assert not repeated, f"bad records with more than one dead letter: {repeated}"

    owner = {shared: ("score", score_group), ingest_only: ("ingest", ingest_group)}
    for topic in (shared, ingest_only):
        mine = {src: v[0] for src, v in by_source.items() if src[0] == topic}
        got = {positions[topic][(part, off)]: pair for (_, part, off), pair in mine.items()}
        assert set(got) == set(reason_at), f"{topic}: dead letters at {sorted(got)}, bad records at {sorted(reason_at)}"
        for index, (entry, headers) in got.items():
            value = values[index] or b""
            assert (entry.source_service, entry.consumer_group) == owner[topic], entry
            assert entry.reason == reason_at[index], (topic, index, entry.reason, entry.detail)
            assert entry.reason in REASONS and entry.detail
            assert entry.payload == value[:KEEP_PAYLOAD_BYTES] and entry.payload_size == len(value)
            assert entry.truncated == (len(value) > KEEP_PAYLOAD_BYTES)
            assert headers["source.service"] == owner[topic][0] and headers["reason"] == entry.reason
            assert headers["source.group"] == owner[topic][1]
            assert (headers["source.topic"], int(headers["source.offset"])) == (topic, entry.offset)

    # the two services' entries for the same bytes are the same but for who wrote them
    def comparable(entry):
        return entry.reason, entry.payload, entry.payload_size
    by_index = {topic: {positions[topic][(e.partition, e.offset)]: comparable(e)
                        for e, _ in entries if e.topic == topic} for topic in (shared, ingest_only)}
    assert by_index[shared] == by_index[ingest_only]

    # one count per dead letter, by reason, where each service exports its metrics; and the
    # records ingest left to the scorer are counted as skipped with the same reasons
    want = Counter(reason_at.values())
    scorer_counts = counter_values(score_metrics, "relstream_scorer_dead_letters_total")
    assert scorer_counts == {(shared, r): float(n) for r, n in want.items()}
    ingest_counts = counter_values(ingest_metrics, "relstream_ingest_dlq_total")
    assert ingest_counts == {(ingest_only, r): float(n) for r, n in want.items()}
    skipped = counter_values(ingest_metrics, "relstream_ingest_dlq_skipped_total")
    assert skipped == {(shared, r): float(n) for r, n in want.items()}

    # one log line per dead letter, in each service's own log
    for service, log, topic in (("score", score.log, shared), ("ingest", ingest.log, ingest_only)):
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if f"dead letter service={service} " in line]
        assert len(lines) == len(bad), f"{service}: {len(lines)} dead-letter log lines for {len(bad)} bad records"
        assert all(f"topic={topic} " in line for line in lines)
    assert "bad records of" in ingest.log.read_text() and shared in ingest.log.read_text()
