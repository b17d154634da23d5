"""Scale-out on one machine: 2 ingest + 2 score processes, one consumer group each, windows on a
real Redis Cluster; one ingest and one scorer are killed with SIGKILL mid-stream.

Checked afterwards: every transaction was scored exactly once (read_committed scores topic,
unique ids, nothing missing), the windows in the cluster equal a single in-memory pass over all
events (the killed ingest's uncommitted batch was redelivered and appended idempotently), both
scorers had taken part before the kill, and every score carries the version routing assigns.
"""
from __future__ import annotations

import time
import urllib.request
import uuid

import pytest

from offline.export import export_untrained
from relstream import lifecycle as lc
from relstream.model_ops import ModelOps
from relstream.triton_control import TritonControl
from schemas.plan_loading import builtin_plan
from tests.ops import services as svc
from tests.ops.test_model_lifecycle_triton import DAY, embeddings

pytestmark = pytest.mark.slow

PARTITIONS = 4


def counter(port: int, family: str) -> float:
    """Sum of a counter family on a service's /metrics (0 when unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families
    try:
        text = urllib.request.urlopen(svc.metrics_url(port), timeout=3).read().decode()
    except OSError:
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == family
               for s in f.samples if s.name.endswith("_total"))


def scored(port: int) -> float:
    return counter(port, "relstream_scorer_scored")


def ingested(port: int) -> float:
    return counter(port, "relstream_ingest_records")


def wait(cond, what: str, timeout: float, procs=()):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in procs)
            raise TimeoutError(f"{what} not reached after {timeout}s\n{tails}")
        time.sleep(0.3)


def test_two_ingest_two_score_survive_sigkill_on_redis_cluster(stack, redis_cluster, tmp_path):
    from redis.cluster import RedisCluster

    from rti_store import MemoryWindowStore, RedisWindowStore
    from schemas.interactions import interactions_of

    plan = builtin_plan("fraud")
    model = f"ops_scale_{uuid.uuid4().hex[:6]}"
    now = time.time_ns()
    export_untrained(plan, stack.model_repository, model, seed=1,
                     embeddings=embeddings(tmp_path / "e.parquet", plan, now - DAY, n=40))
    triton = TritonControl(stack.triton_grpc_url)
    ops = ModelOps(stack.model_repository, model, triton, sleep=lambda s: None, drain_s=0.0,
                   warmup_requests=2, triton_warmup=1)
    cfg = svc.ServiceConfig(stack, tmp_path / "svc", model_name=model)
    # short transaction timeout: the broker aborts the killed scorer's open transaction soon,
    # so read_committed readers are not held behind it for the default minute
    config = cfg.write(redis={"url": redis_cluster.url, "cluster": True},
                       score={"transaction_timeout_ms": 5000, "max_batch": 32},
                       ingest={"batch_size": 50})
    procs: list[svc.Service] = []
    try:
        ops.deploy(1)
        t = cfg.topics
        svc.create_topics(stack.kafka_bootstrap, [t["facts"], t["scores"], t["dlq"]], partitions=PARTITIONS)
        ingest_a, in_a = svc.start_ingest(config, tmp_path, "ingest-a")
        ingest_b, in_b = svc.start_ingest(config, tmp_path, "ingest-b")
        score_a, port_a = svc.start_score(config, tmp_path, "score-a")
        score_b, port_b = svc.start_score(config, tmp_path, "score-b")
        procs += [ingest_a, ingest_b, score_a, score_b]
        for p in procs:
            p.wait_log("relstream ", timeout=120)  # each prints its banner once its clients are up

        codec = svc.codec_for(cfg)
        n1, n2 = 300, 300
        rows = svc.transaction_rows(n1 + n2, now - 600 * 10**9, customers=60, terminals=25)
        svc.produce_transactions(stack.kafka_bootstrap, t["facts"], codec, rows[:n1])
        # both of each pair work (the groups split the partitions) before one of each dies mid-stream
        wait(lambda: scored(port_a) > 0 and scored(port_b) > 0, "both scorers scoring", 120, procs)
        wait(lambda: ingested(in_a) > 0 and ingested(in_b) > 0, "both ingests consuming", 60, procs)
        before = (scored(port_a), scored(port_b))
        ingest_a.kill()
        score_a.kill()
        svc.produce_transactions(stack.kafka_bootstrap, t["facts"], codec, rows[n1:])

        got = svc.read_topic(stack.kafka_bootstrap, t["scores"], n1 + n2, timeout=150)
        ids = []
        state = lc.load_routing(ops.routing_path)
        for msg in got:
            _s, rec = codec.decode(msg.value())
            ids.append(rec["event_id"])
            assert rec["model_version"] == str(lc.route(rec["entity_ids"]["customer_id"], state))
        want = {str(r["transaction_id"]) for r in rows}
        assert {str(i) for i in ids} == want, f"missing {len(want - {str(i) for i in ids})}\n{score_b.tail()}"
        assert len(ids) == len(want), f"{len(ids) - len(want)} duplicate scores"
        assert score_b.alive() and ingest_b.alive()
        assert scored(port_b) > before[1]  # the survivor took over the dead scorer's partitions

        # windows: the surviving ingest finished everything, exactly like one in-memory pass
        mem = MemoryWindowStore(plan)
        mem.append([a for r in rows for a in interactions_of(plan, "transactions", r)])
        client = RedisCluster.from_url(redis_cluster.url)
        store = RedisWindowStore(plan, client)
        keys = sorted(mem.keys(), key=repr)

        def same():
            return all(store.rows(h, e) == mem.rows(h, e) for h, e in keys)
        try:
            wait(same, "cluster windows equal to the single pass", 90, procs)
            assert sum(1 for _ in store.iter_keys()) == len(keys) == 60 + 25
            per_node = redis_cluster.keys_per_node()
            assert all(v > 0 for v in per_node.values()), per_node
        finally:
            client.close()
    finally:
        for p in procs:
            if p.alive():
                p.stop()
            else:
                p.kill()
        ops.unload_versions(keep=())
        triton.close()
