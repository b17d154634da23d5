"""Fallbacks on real servers: Redis down or slow -> degraded answers within the deadline;
Triton down -> HTTP 503 with the reason, the Kafka path pauses, retries and loses nothing."""
from __future__ import annotations

import collections
import threading
import time

import httpx
import pytest

from tests.scorer.conftest import (AUTH, ServerThread, consume_all, fact_row, history, load_test_model,
                                   make_app, produce_facts, scorer_for)

pytestmark = pytest.mark.timeout(180)


def test_redis_down_or_slow_degrades_within_the_deadline(plan, stack, test_model, stack_factory, codec,
                                                         new_topic, kafka_client_config, kafka_consumer_config):
    import redis

    from rti_store import RedisWindowStore
    private = stack_factory(components=("redis",))
    client = redis.Redis.from_url(private.redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
    store = RedisWindowStore(plan, client, key_prefix="fallback")
    store.append(history(plan, [fact_row(i, customer=7) for i in range(1, 6)]))
    store.mark_complete("fallback")  # filled here, not by ingest
    deadline_ms = 50
    app = make_app(plan, stack, test_model, store, window_deadline_ms=deadline_ms, window_cooldown_ms=200)
    metrics = app.state.deps.metrics
    row = fact_row(10, customer=7)

    def timed_post(http):
        t0 = time.perf_counter()
        r = http.post("/v1/score", json=row)
        return r, time.perf_counter() - t0

    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, headers=AUTH, timeout=10) as http:
        r, _ = timed_post(http)
        healthy_score = r.json()["score"]
        assert r.status_code == 200 and r.json()["degraded"] == []

        # slow: every command blocks for 1.5 s; the answer still leaves within the deadline
        client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        r, took = timed_post(http)
        assert r.status_code == 200 and r.json()["degraded"] == ["windows_unavailable"]
        assert took < deadline_ms / 1000 + 0.25, f"answer took {took:.3f}s, deadline {deadline_ms} ms"
        time.sleep(1.6)

        # down: connection refused -> empty windows, flagged, no error
        private.stop_component("redis")
        r, took = timed_post(http)
        body = r.json()
        assert r.status_code == 200 and body["degraded"] == ["windows_unavailable"]
        assert body["score"] != healthy_score  # it really scored without the 5-event window
        assert took < deadline_ms / 1000 + 0.25
        assert httpx.get(f"{srv.url}/readyz").status_code == 503

        # the Kafka path degrades the same way (and commits: nothing is lost)
        facts, scores, dlq = new_topic("facts"), new_topic("scores"), new_topic("dlq")
        produce_facts(kafka_client_config, facts, codec, [fact_row(i, customer=7) for i in range(20, 25)])
        scorer = scorer_for(plan, stack, test_model, consumer_config=kafka_consumer_config,
                            client_config=kafka_client_config, codec=codec, store=store,
                            topics=(facts, scores, dlq), group=f"g-{facts}", txn_id=f"tx-{facts}",
                            deadline_s=0.25)
        scorer.start()
        assert scorer.run(idle_exit_s=2.0).scored == 5
        scorer.close()
        recs = [codec.decode(m.value())[1] for m in consume_all(kafka_consumer_config, scores, 5)]
        assert len(recs) == 5 and all(rec["degraded"] == ["windows_unavailable"] for rec in recs)

        # back up (AOF on, the default: windows and marker survived): after the cool-down, windows
        # are read again, unflagged
        private.start_component("redis")
        time.sleep(0.3)
        r, _ = timed_post(http)
        assert r.status_code == 200 and r.json()["degraded"] == []
    assert metrics.value("relstream_scorer_degraded_total", {"path": "http", "reason": "windows_unavailable"}) == 2
    store.close()


def test_triton_down_gives_503_and_the_kafka_path_resumes_without_loss(
        plan, stack, stack_factory, codec, new_topic, kafka_client_config, kafka_consumer_config, window_store):
    private = stack_factory(components=("triton",))
    model = load_test_model(plan, private)
    facts, scores, dlq = new_topic("facts", partitions=2), new_topic("scores"), new_topic("dlq")
    scorer = scorer_for(plan, private, model, consumer_config=kafka_consumer_config,
                        client_config=kafka_client_config, codec=codec, store=window_store,
                        topics=(facts, scores, dlq), group=f"g-{facts}", txn_id=f"tx-{facts}",
                        triton_timeout_s=1.0, backoff_s=0.05, backoff_max_s=0.2, max_batch=16)
    scorer.start()
    runner = threading.Thread(target=scorer.run, kwargs={"idle_exit_s": 4.0})
    runner.start()
    first = [fact_row(i, customer=i % 9 + 1) for i in range(100)]
    second = [fact_row(i, customer=i % 9 + 1) for i in range(100, 200)]
    app = make_app(plan, private, model, window_store, triton_timeout_s=1.0)
    try:
        with ServerThread(app) as srv, httpx.Client(base_url=srv.url, headers=AUTH, timeout=10) as http:
            assert http.post("/v1/score", json=fact_row(1000)).status_code == 200
            produce_facts(kafka_client_config, facts, codec, first)
            deadline = time.monotonic() + 30
            while scorer.stats.scored < 50 and time.monotonic() < deadline:
                time.sleep(0.05)

            private.stop_component("triton")
            r = http.post("/v1/score", json=fact_row(1001))
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "triton_unavailable" and "Triton unavailable" in err["message"]
            assert r.headers["retry-after"] == "1"
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["triton"] != "ok"
            produce_facts(kafka_client_config, facts, codec, second)
            time.sleep(1.5)  # the Kafka path is now paused and retrying
            assert scorer.metrics.value("relstream_scorer_retries_total", {"path": "kafka", "kind": "triton"}) > 0

            private.start_component("triton")
            load_test_model(plan, private, model)
            # clients retry after Retry-After; the gRPC channel reconnects within ~1 s
            deadline = time.monotonic() + 5
            while (r := http.post("/v1/score", json=fact_row(1002))).status_code == 503 \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            assert r.status_code == 200, r.text
    finally:
        runner.join(90)
        scorer.close()
    assert not runner.is_alive()
    out = consume_all(kafka_consumer_config, scores, 200, timeout=30, settle=1.0)
    counts = collections.Counter(codec.decode(m.value())[1]["event_id"] for m in out)
    missing = sorted(set(map(str, range(200))) - set(counts), key=int)
    assert not missing, f"missing {missing} stats {scorer.stats}"
    assert sorted(counts, key=int) == [str(i) for i in range(200)]
    assert set(counts.values()) == {1}
    assert scorer.stats.scored == 200 and scorer.stats.dead_letters == 0
