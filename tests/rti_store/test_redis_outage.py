"""The Redis store when Redis goes away and comes back (a private redis-only stack)."""
from __future__ import annotations

import pytest

from schemas.interactions import interactions_of
from schemas.plan_loading import builtin_plan
from rti_store import RedisWindowStore, StoreUnavailable

PLAN = builtin_plan("fraud")


def tx(i: int) -> dict:
    return {"transaction_id": i, "tx_datetime": 10**18 + i, "customer_id": 1, "terminal_id": 2, "tx_amount": 1.0}


def test_outage_raises_store_unavailable_then_recovers(stack_factory):
    from relstream.stack import ComponentSettings
    # no persistence: the restarted server is empty (the default, AOF, would keep the data)
    st = stack_factory(components=("redis",), settings=ComponentSettings(redis_persistence=False))
    store = RedisWindowStore(PLAN, st.redis_url, key_prefix="outage")
    try:
        items = interactions_of(PLAN, "transactions", tx(1))
        assert store.append(items) == 2
        keys = [(h, e) for h, e, _ in items]
        st.stop_component("redis")
        with pytest.raises(StoreUnavailable, match="redis"):
            store.append(interactions_of(PLAN, "transactions", tx(2)))
        with pytest.raises(StoreUnavailable):
            store.read_many(keys, 10**18 + 10)
        st.start_component("redis")
        # a fresh server has neither the data (no persistence here) nor the Lua script: the store
        # reconnects and reloads the script by itself; the caller just retries the batch
        batch = interactions_of(PLAN, "transactions", tx(2)) + items
        assert store.append(batch) == 4
        assert store.append(batch) == 0
        assert [len(w) for w in store.read_many(keys, 10**18 + 10)] == [2, 2]
    finally:
        store.close()


def test_hung_redis_times_out_instead_of_blocking(stack_factory):
    import os
    import signal
    import time

    st = stack_factory(components=("redis",))
    store = RedisWindowStore(PLAN, st.redis_url, key_prefix="hung", socket_timeout_s=0.5)
    pid = st.pids()["redis"]
    try:
        items = interactions_of(PLAN, "transactions", tx(1))
        store.append(items)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="redis"):
            store.read_many([(h, e) for h, e, _ in items], 10**18 + 10)
        assert time.monotonic() - t0 < 5  # one timeout, no silent retry doubling the deadline
        os.kill(pid, signal.SIGCONT)
        assert store.append(items) == 0  # reconnects; the batch was already stored
    finally:
        os.kill(pid, signal.SIGCONT)
        store.close()
