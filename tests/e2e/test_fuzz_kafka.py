"""Bad input on the Kafka path: >= 10,000 hypothesis-generated malformed records interleaved with
good transactions, on the interactions topic (-> `relstream ingest`) and on the facts topic
(-> `relstream score`). Neither service crashes; every malformed record lands in the dead-letter
topic exactly where it came from (source topic/partition/offset) with a reason and an error text
(naming the field for missing/mistyped fields); every good record is processed: the Redis windows
equal a clean pass over the good records, and every good fact gets exactly one score, equal to the
offline model's score on offline-built tensors.

The facts are produced after ingest has committed the interactions, so the score check is exact.
Default suite: >= 3,000 malformed records (about 1.5 minutes here); with --soak (or
RELSTREAM_FUZZ_EVENTS=10000): >= 10,000.
"""
from __future__ import annotations

import os
import time

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings

from relstream.demo.events import ScoreCollector, read_topic, wait_caught_up, wait_group_members
from relstream.demo.reference import offline_reference_scores
from relstream.demo.report import parity_of

from .conftest import timed
from .faults import synthetic_transactions, window_state_equal
from .malformed import MalformedFactory, rejected_by_ingest, rejected_by_scorer

FULL_BAD = 10_000


def target_bad(soak: bool) -> int:
    """10,000 with --soak (or RELSTREAM_FUZZ_EVENTS=N); a smaller default keeps `make test` short."""
    if os.environ.get("RELSTREAM_FUZZ_EVENTS"):
        return int(os.environ["RELSTREAM_FUZZ_EVENTS"])
    return FULL_BAD if soak else 3_000
INGEST_MAX_PAYLOAD = 256 * 1024  # ingest.max_payload_bytes default: larger records are dead-lettered
OVERSIZE = 40
DECODE_REASONS = {"empty", "too_short", "bad_magic", "unknown_schema", "undecodable", "oversize"}


def generate_stream(plan, codec, registry, target_bad: int):
    """[(kind, Bad | record)] with good transactions between batches of malformed ones."""
    factory = MalformedFactory(registry, codec, INGEST_MAX_PAYLOAD)
    goods = iter(synthetic_transactions(target_bad // 5 + 100, first_id=7_000_000, seed=11))
    stream: list = []
    rejected = {"n": 0}

    def draw_round(r: int) -> None:
        @seed(20261121 + r)  # reproducible, and a new set of records each round
        @settings(max_examples=200, phases=[Phase.generate], database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(factory.strategy().filter(lambda b: _bad_for_both(plan, codec, b.value, rejected)))
        def draw(bad):
            stream.append(("bad", bad))
            if len(stream) % 12 == 0:
                stream.append(("good", next(goods)))
        draw()

    r = 0
    while sum(1 for k, _ in stream if k == "bad") < target_bad - OVERSIZE:
        draw_round(r)
        r += 1
    for i in range(OVERSIZE):
        stream.insert(len(stream) * (i + 1) // (OVERSIZE + 1), ("bad", factory.oversize(next(goods))))
    return stream, rejected["n"]


def _bad_for_both(plan, codec, value, rejected) -> bool:
    ok = rejected_by_ingest(plan, codec, value, INGEST_MAX_PAYLOAD) is not None and \
        rejected_by_scorer(plan, codec, value) is not None
    rejected["n"] += not ok  # a "malformed" record the services would accept is not malformed: skipped
    return ok


def test_malformed_records_go_to_the_dlq_and_good_ones_are_processed(e2e, e2e_model, plan, soak):
    kafka = e2e.stack.kafka_bootstrap
    t0 = time.monotonic()
    wanted = target_bad(soak)
    stream, skipped = generate_stream(plan, e2e.codec, e2e.codec.registry, wanted)
    bad = [b for k, b in stream if k == "bad"]
    good = [r for k, r in stream if k == "good"]
    cats = {}
    for b in bad:
        cats[b.category] = cats.get(b.category, 0) + 1
    timed(f"generated {len(bad)} malformed ({cats}; {skipped} candidates skipped as valid) + {len(good)} good", t0)
    assert len(bad) >= wanted

    # phase 1: the interactions topic -> ingest
    t0 = time.monotonic()
    ingest = e2e.service("ingest", "ingest", "--no-progress")
    offsets = {e2e.tx_topic: {}, e2e.topics["facts"]: {}}
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True, "linger.ms": 5,
                         "message.max.bytes": 2_000_000})

    def produce_all(topic):
        for i, (kind, item) in enumerate(stream):
            value = item.value if kind == "bad" else e2e.codec.encode("transactions-value", item)

            def on_delivery(err, msg, i=i, topic=topic):
                assert err is None, err
                offsets[topic][(msg.partition(), msg.offset())] = i
            while True:
                try:
                    producer.produce(topic, value=value, key=str(i % 7).encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        assert producer.flush(60) == 0

    produce_all(e2e.tx_topic)
    wait_caught_up(kafka, e2e.ingest_group, [e2e.tx_topic], 180, check=lambda: ingest.check_alive("ingest"))
    timed(f"ingest consumed {len(stream)} records", t0)

    # phase 2: the facts topic -> score
    t0 = time.monotonic()
    collector = ScoreCollector(kafka, e2e.topics["scores"], e2e.codec)
    collector.start()
    try:
        scorer = e2e.service("score", "score")
        wait_group_members(kafka, [e2e.score_group], 90, check=lambda: scorer.check_alive("score"))
        produce_all(e2e.topics["facts"])
        good_ids = [str(r["transaction_id"]) for r in good]
        missing = collector.wait_for(good_ids, 180, check=lambda: scorer.check_alive("score"))
        wait_caught_up(kafka, e2e.score_group, [e2e.topics["facts"]], 120, check=lambda: scorer.check_alive("score"))
        time.sleep(0.5)
    finally:
        collector.stop()
    timed(f"scorer consumed {len(stream)} records", t0)
    assert ingest.alive and scorer.alive, "a service crashed on bad input"
    assert ingest.starts == 1 and scorer.starts == 1

    # every malformed record is in the DLQ, once per source record, with a reason and an error
    from schemas.dead_letter import KEEP_PAYLOAD_BYTES, parse_dead_letter
    letters = [parse_dead_letter(m, e2e.codec.decode) for m in read_topic(kafka, e2e.topics["dlq"], timeout_s=20)]
    for topic, service in ((e2e.tx_topic, "ingest"), (e2e.topics["facts"], "score")):
        mine = [dl for dl in letters if dl.topic == topic]
        # each topic here has one consumer, so its dead letters are all that service's
        assert {dl.source_service for dl in mine} == {service}, {dl.source_service for dl in mine}
        seen: dict[int, list] = {}
        for dl in mine:
            _, part, off = dl.source
            idx = offsets[topic].get((part, off))
            assert idx is not None, f"{service}: dead letter for an unknown source offset {dl.source}"
            seen.setdefault(idx, []).append(dl)
        bad_idx = {i for i, (k, _) in enumerate(stream) if k == "bad"}
        good_dead = set(seen) - bad_idx
        assert not good_dead, f"{service}: good records dead-lettered: {[(stream[i][1], seen[i][0].reason, seen[i][0].detail) for i in list(good_dead)[:3]]}"
        lost = bad_idx - set(seen)
        assert not lost, f"{service}: {len(lost)} malformed records not dead-lettered, e.g. {[stream[i][1] for i in list(lost)[:3]]}"
        repeats = sum(len(v) - 1 for v in seen.values())
        reasons: dict[str, int] = {}
        for i, dls in seen.items():
            b = stream[i][1]
            dl = dls[0]
            reason, error = dl.reason, dl.detail
            reasons[reason] = reasons.get(reason, 0) + 1
            assert reason and error, f"{service}: dead letter without reason/detail: {dl}"
            if b.category in ("missing", "mistyped"):
                assert reason == "invalid_row" and b.field in error, f"{service}: {b.category} {b.field}: {reason} {error}"
            elif b.category == "oversize":
                assert reason == "oversize", f"{service}: oversize record dead-lettered as {reason}"
            elif b.category in ("garbage", "unknown_schema", "truncated"):
                assert reason in DECODE_REASONS, f"{service}: {b.category} dead-lettered as {reason}: {error}"
            value = b.value or b""
            assert dl.payload == value[:KEEP_PAYLOAD_BYTES] and dl.payload_size == len(value), \
                f"{service}: DLQ payload is not the first {KEEP_PAYLOAD_BYTES} bytes of the source"
        print(f"[fuzz] {service}: {len(seen)} malformed records dead-lettered ({repeats} repeated deliveries), "
              f"reasons {reasons}", flush=True)

    # every good record processed: windows exact, one score each, equal to the offline score
    ok, why = window_state_equal(plan, e2e.redis(), good)
    assert ok, why
    assert not missing, f"{len(missing)} good facts unscored"
    assert collector.duplicates == 0
    online = np.array([collector.seen[i].record["score"] for i in good_ids], np.float32)
    offline, _ = offline_reference_scores(e2e_model, good, good)
    parity = parity_of(good_ids, online, offline)
    print(f"[fuzz] {len(good)} good records among them: windows equal, all scored once, max |online - offline| "
          f"{parity.max_abs_diff:.2e}", flush=True)
    assert parity.ok, parity
