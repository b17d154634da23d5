"""Session events in -> ranked lists out, on the real Kafka + Redis + Triton (untrained ranker)."""
from __future__ import annotations

import numpy as np
import pytest

from rti_store import MemoryWindowStore, RedisWindowStore
from schemas.interactions import interactions_of
from schemas.plan_loading import builtin_plan
from streams.sessions import PURCHASE_LINES_SUBJECT, RECOMMENDATIONS_SUBJECT, synthetic_purchase_lines
from streams.synthetic import produce_values
from tests.scorer.conftest import consume_all
from tests.scorer.recsys_fixtures import DAY, RANKER, T0, expected_top, load_ranker, reference_ranking

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def recsys():
    return builtin_plan("recsys")


def build(recsys, stack, tmp_path, facts, out, dlq, group, **score):
    from relstream.config import validate
    from relstream.serving import build_kafka_scorer
    from scorer.settings import ScoreSettings
    cfg = validate({"run_dir": str(tmp_path / "run"), "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
                    "redis": {"url": stack.redis_url}, "triton": {"url": f"grpc://{stack.triton_grpc_url}",
                                                                   "model_name": RANKER},
                    "stack": {"model_repository": str(stack.model_repository)}})
    settings = ScoreSettings(plan="recsys", facts_topics=[facts], dlq_topic=dlq, group_id=group,
                             transactional_id=f"tx-{group}", registry_dir=str(tmp_path / "registry"),
                             append_scored=True, consumer={"session.timeout.ms": 6000},
                             recommend={"topic": out, "catalog_top_n": 50, "top_k": 5}, **score)
    return build_kafka_scorer(cfg, settings)


def test_each_session_event_gets_its_ranked_list_exactly_once(recsys, stack, tmp_path, new_topic, redis_client,
                                                             kafka_client_config, kafka_consumer_config, codec):
    version_dir = load_ranker(recsys, stack)
    lines = synthetic_purchase_lines(36, seed=9, n_households=8, n_products=60, lines_per_basket=(2, 8),
                                     start_ns=T0 - 4 * DAY, span_s=3.5 * 86_400)
    history, live = [r for r in lines if r["basket_id"] <= 18], [r for r in lines if r["basket_id"] > 18]
    store = RedisWindowStore(recsys, redis_client)  # the scorer's default key prefix
    store.append([a for r in history for a in interactions_of(recsys, "transactions", r)])  # ingested earlier
    store.mark_complete("rec-test")

    facts, out, dlq = new_topic("sessions", partitions=2), new_topic("recs"), new_topic("dlq")
    values = [codec.encode(PURCHASE_LINES_SUBJECT, r) for r in live]
    bad = codec.encode("transactions-value", {"transaction_id": 1, "tx_datetime": T0, "customer_id": 1,
                                              "terminal_id": 2, "tx_amount": 1.0})
    produce_values(_producer(kafka_client_config), facts, values + [bad],
                   keys=[str(r["household_id"]).encode() for r in live] + [b"x"])

    # Two incarnations: the first stops after a few batches, the second resumes from its offsets.
    group = f"g-{facts}"
    first = build(recsys, stack, tmp_path, facts, out, dlq, group, max_batch=8)
    first.start()
    s1 = first.run(max_events=20)
    first.close()
    second = build(recsys, stack, tmp_path, facts, out, dlq, group, max_batch=8)
    second.start()
    s2 = second.run(idle_exit_s=3.0)
    second.close()
    assert s1.consumed >= 20 and s2.consumed > 0 and s1.consumed + s2.consumed == len(live) + 1
    assert s1.scored + s2.scored == len(live) and s1.dead_letters + s2.dead_letters == 1

    got = consume_all(kafka_consumer_config, out, len(live), settle=1.5)
    records = {}
    for msg in got:
        subject, rec = codec.decode(msg.value())
        assert subject == RECOMMENDATIONS_SUBJECT
        assert msg.key() == str(rec["household_id"]).encode()
        assert rec["event_id"] not in records, f"duplicate ranked list for event {rec['event_id']}"
        records[rec["event_id"]] = rec
    assert sorted(records, key=int) == [str(r["transaction_id"]) for r in live]

    # Each list = the bundle in-process on the household's lines up to and including the event,
    # candidates = catalog top-50 minus the open basket's products.
    reference = MemoryWindowStore(recsys)
    reference.append([a for r in lines for a in interactions_of(recsys, "transactions", r)])
    hop = recsys.hops[0].key.key
    catalog = list(range(1, 51))
    for r in live[::3]:
        rec = records[str(r["transaction_id"])]
        anchor = r["transaction_timestamp"] + 1
        assert rec["anchor_time"] == anchor and rec["model"] == RANKER and rec["version"] == "1"
        window = reference.read(hop, r["household_id"], anchor)
        basket = set(window.columns["product_id"][window.columns["basket_id"] == r["basket_id"]].tolist())
        assert r["product_id"] in basket
        cands = [p for p in catalog if p not in basket]
        scores, _, _ = reference_ranking(version_dir, recsys, {"household_id": r["household_id"]}, {hop: window},
                                         anchor, cands)
        assert [i["product_id"] for i in rec["items"]] == expected_top(scores, cands, 5)
        by_id = dict(zip(cands, scores.tolist()))
        assert all(abs(i["score"] - by_id[i["product_id"]]) <= 1e-5 for i in rec["items"])
        assert rec["degraded"] == []
    dead = consume_all(kafka_consumer_config, dlq, 1, settle=0.5)
    assert len(dead) == 1


def _producer(conf):
    from confluent_kafka import Producer
    return Producer({**conf, "enable.idempotence": True, "linger.ms": 2})
