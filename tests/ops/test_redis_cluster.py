"""The window store on a real Redis Cluster, reached the way the services reach it (config)."""
from __future__ import annotations

import numpy as np
import pytest

from relstream.config import redis_client, validate
from rti_store import MemoryWindowStore, RedisWindowStore
from schemas.interactions import interactions_of
from schemas.plan_loading import builtin_plan

PLAN = builtin_plan("fraud")


def test_window_store_through_config_on_cluster(redis_cluster):
    from redis.cluster import RedisCluster

    cfg = validate({"redis": {"url": redis_cluster.url, "cluster": True}})
    client = redis_client(cfg)
    assert isinstance(client, RedisCluster)
    store = RedisWindowStore(PLAN, client, key_prefix="ops")
    mem = MemoryWindowStore(PLAN)
    try:
        rng = np.random.default_rng(3)
        t0 = 1_790_000_000 * 10**9
        rows = [{"transaction_id": i, "tx_datetime": t0 + int(rng.integers(0, 6 * 86_400)) * 10**9,
                 "customer_id": int(rng.integers(0, 500)), "terminal_id": int(rng.integers(0, 120)),
                 "tx_amount": float(rng.uniform(1, 500))} for i in range(3000)]
        items = [a for r in rows for a in interactions_of(PLAN, "transactions", r)]
        # one batch of appends spans every node; redis-py splits it per slot, never cross-slot
        for i in range(0, len(items), 1000):
            assert store.append(items[i:i + 1000]) == mem.append(items[i:i + 1000])
        per_node = redis_cluster.keys_per_node()
        assert all(n > 0 for n in per_node.values()), per_node
        distinct = len({r['customer_id'] for r in rows}) + len({r['terminal_id'] for r in rows})
        assert sum(per_node.values()) == distinct  # one key per window, nothing else
        assert store.append(items) == 0  # redelivery of everything: idempotent

        keys = [(PLAN.hop_keys[0], e) for e in range(500)] + [(PLAN.hop_keys[1], e) for e in range(120)]
        as_of = [t0 + int(x) * 10**9 for x in rng.integers(0, 7 * 86_400, len(keys))]  # per-key anchors
        got, want = store.read_many(keys, as_of), mem.read_many(keys, as_of)
        assert sum(len(w) for w in want) > 1000
        for (h, e), a, b in zip(keys, got, want):
            assert np.array_equal(a.event_time, b.event_time), (h, e)
            for col in b.columns:
                assert np.array_equal(a.columns[col], b.columns[col]), (h, e, col)
    finally:
        store.close()
        client.close()


def test_cluster_flag_is_validated():
    from relstream.config import ConfigError
    with pytest.raises(ConfigError, match="redis.cluster"):
        validate({"redis": {"cluster": "maybe"}})
