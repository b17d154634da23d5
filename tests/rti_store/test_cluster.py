"""The Redis window store on a real 3-node Redis Cluster (local redis-server processes).

Batches span many entities, hence many slots and all three nodes: appends and reads must route
per slot (hash tags) and give exactly what the in-memory store gives.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from schemas.interactions import interactions_of
from schemas.plan_loading import builtin_plan
from rti_store import MemoryWindowStore, RedisWindowStore

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
PLAN = builtin_plan("fraud")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _cluster_ports(n: int) -> list[int]:
    """Ports whose cluster-bus port (+10000) is free too."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 < 65536 and p not in ports and _free(p + 10000):
            ports.append(p)
            if len(ports) == n:
                return ports
    raise RuntimeError("no free ports for a local Redis Cluster")


@pytest.fixture(scope="module")
def cluster_nodes(tmp_path_factory):
    base = tmp_path_factory.mktemp("redis-cluster")
    ports = _cluster_ports(3)
    procs = []
    try:
        for p in ports:
            d = base / str(p)
            d.mkdir()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir", str(d)],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        import redis
        for p in ports:
            deadline = time.monotonic() + 20
            while True:
                try:
                    redis.Redis(port=p).ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        # assign slots evenly and join the nodes (what `redis-cli --cluster create` does)
        per = 16384 // len(ports)
        for i, p in enumerate(ports):
            hi = 16383 if i == len(ports) - 1 else (i + 1) * per - 1
            redis.Redis(port=p).execute_command("CLUSTER ADDSLOTSRANGE", i * per, hi)
        for p in ports[1:]:
            redis.Redis(port=ports[0]).execute_command("CLUSTER MEET", "127.0.0.1", p)
        deadline = time.monotonic() + 30
        def ready(p):
            info = redis.Redis(port=p).cluster("INFO")
            return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == len(ports)

        while not all(ready(p) for p in ports):
            if time.monotonic() > deadline:
                raise TimeoutError("local Redis Cluster did not become ok")
            time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_cluster_store_matches_memory(cluster_nodes):
    from redis.cluster import RedisCluster, key_slot

    client = RedisCluster(host="127.0.0.1", port=cluster_nodes[0])
    try:
        store = RedisWindowStore(PLAN, client, key_prefix="cl")
        mem = MemoryWindowStore(PLAN)
        rng = np.random.default_rng(11)
        t0 = 10**18
        rows = [{"transaction_id": i, "tx_datetime": t0 + int(rng.integers(0, 10**14)),
                 "customer_id": int(rng.integers(0, 300)), "terminal_id": int(rng.integers(0, 80)),
                 "tx_amount": float(i)} for i in range(2000)]
        items = [a for r in rows for a in interactions_of(PLAN, "transactions", r)]
        keys = [(PLAN.hop_keys[0], e) for e in range(300)] + [(PLAN.hop_keys[1], e) for e in range(80)]
        nodes = {client.get_node_from_key(store.redis_key(h, e)).port for h, e in keys}
        assert nodes == set(cluster_nodes)  # the batch really spans all nodes
        for i in range(0, len(items), 700):
            assert store.append(items[i:i + 700]) == mem.append(items[i:i + 700])
        assert store.append(items) == 0  # redelivery
        for as_of in (t0 + 10**14, t0 + 5 * 10**13):
            for a, b in zip(store.read_many(keys, as_of), mem.read_many(keys, as_of)):
                assert np.array_equal(a.event_time, b.event_time)
                assert np.array_equal(a.columns["tx_amount"], b.columns["tx_amount"])
        for h, e in keys[::17]:
            assert store.rows(h, e) == mem.rows(h, e)
            assert key_slot(store.redis_key(h, e)) == key_slot(store.redis_key(h, e).split(b"{")[1].split(b"}")[0])
        # scripts lost (restart/failover): reloaded transparently, appends stay idempotent
        client.script_flush()
        assert store.append(items[:100]) == 0
    finally:
        client.close()
