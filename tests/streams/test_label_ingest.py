"""Label events through a real `relstream ingest` (real Kafka and Redis of the test stack).

The label stream of the `fraud_labels` plan is consumed like an interaction topic: label events
become appends to the per-entity label windows, committed after the Redis ack. Duplicated,
out-of-order label events and a kill -9 in the middle of the stream must leave Redis exactly as
one clean pass over the distinct events does (every label once in each of its windows).
"""
from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from relstream.stack.process import Process
from rti_store import RedisWindowStore
from schemas.interactions import with_known_time
from schemas.plan_loading import builtin_plan
from schemas.tensors import label_stats
from streams.synthetic import produce_values, synthetic_transactions

LABELS_SUBJECT = "transaction-labels-value"
DAY = 86_400 * 10**9


def label_events(n: int, seed: int) -> list[dict]:
    """Labels of ``n`` synthetic transactions: ~10 % fraud, a third with an explicit known time
    (1-20 days after the transaction), the others known at transaction time + the plan's delay;
    10 % sent twice, all shuffled (labels arrive in any order)."""
    rng = random.Random(seed)
    out = []
    for tx in synthetic_transactions(n, seed=seed, n_customers=80, n_terminals=120):
        known = tx["tx_datetime"] + rng.randint(1, 20) * DAY if rng.random() < 0.33 else None
        out.append({"transaction_id": tx["transaction_id"], "tx_datetime": tx["tx_datetime"],
                    "customer_id": tx["customer_id"], "terminal_id": tx["terminal_id"],
                    "tx_fraud": int(rng.random() < 0.1), "label_known_at": known})
    out += rng.sample(out, n // 10)
    rng.shuffle(out)
    return out


def _config(tmp_path, stack, registry_dir, topic, dlq, group) -> str:
    cfg = {"run_dir": str(tmp_path / "run"), "plan": "fraud_labels",
           "kafka": {"bootstrap_servers": stack.kafka_bootstrap}, "redis": {"url": stack.redis_url},
           "topics": {"dlq": dlq, "labels": topic, "interactions": []},
           "ingest": {"group_id": group, "batch_size": 60, "batch_timeout_s": 0.05, "registry": str(registry_dir),
                      "shutdown_grace_s": 5.0, "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}}}
    path = tmp_path / "relstream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _ingest(config: str, name: str, topic: str) -> Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELSTREAM")}
    logs = Path(config).parent / "ingest-logs"
    return Process(name, [sys.executable, "-m", "relstream", "--config", config, "ingest", "--log-level", "WARNING",
                          "--kafka-config", f"group.instance.id=ingest-{topic}"],
                   logs / f"{name}.log", out_path=logs / f"{name}.out", env=env, cwd=os.getcwd()).start()


def _paced(prod, topic, values, slice_size: int = 40, pause: float = 0.05) -> None:
    for i in range(0, len(values), slice_size):
        produce_values(prod, topic, values[i:i + slice_size])
        time.sleep(pause)


def _wait(cond, timeout: float, what: str, proc: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise AssertionError(f"ingest exited: {proc.tail(40)}")
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {proc.tail(20)}")


def test_label_events_land_in_redis_exactly_once_across_a_kill_and_restart(
        stack, new_topic, redis_client, codec, registry_dir, ih, tmp_path):
    plan = builtin_plan("fraud_labels")
    topic, dlq = new_topic("labels", partitions=3), new_topic("labels-dlq")
    group = f"g-{topic}"
    config = _config(tmp_path, stack, registry_dir, topic, dlq, group)
    events = label_events(1500, seed=11)
    values = ih.encode_all(codec, LABELS_SUBJECT, events)
    assert codec.decode(values[0])[1]["label_known_at"] == events[0]["label_known_at"]
    prod = ih.producer(stack.kafka_bootstrap)
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 3)
    half = len(values) // 2
    produce_values(prod, topic, values[:half])
    try:
        first = _ingest(config, "ingest-labels-1", topic)
        _wait(lambda: first.log_count("relstream ingest:") > 0, 60, "start-up", first)
        _wait(lambda: probe.total() > 0, 60, "a first commit", first)
        feeder = threading.Thread(target=_paced, args=(prod, topic, values[half:]), daemon=True)
        feeder.start()
        time.sleep(random.Random(3).uniform(0.1, 0.8))
        first.kill()  # kill -9 while label batches are in flight
        killed_at = probe.total()
        feeder.join()
        ends = ih.end_offsets(stack.kafka_bootstrap, topic, 3)
        assert sum(ends.values()) == len(values)
        second = _ingest(config, "ingest-labels-2", topic)
        probe.wait_for(ends, timeout=120)
        second.signal_group(15)
        second.proc.wait(30)
        assert second.proc.returncode == 0, second.tail(40)
    finally:
        probe.close()
    assert killed_at < len(values)  # the kill hit the stream before the end
    expected = ih.single_pass(plan, codec, values, table="transaction_labels")
    redis_store = RedisWindowStore(plan, redis_client)
    n = ih.assert_same_windows(expected, redis_store, redis_client)
    # every distinct label exactly once in each of its two windows
    distinct = {e["transaction_id"] for e in events}
    for hop in plan.label_hops:
        col = hop.key.target.column
        stored = sum(len(redis_store.rows(hop.key.key, e)) for e in {ev[col] for ev in events})
        assert stored == len(distinct)
    # and the counts a request reads are those of the distinct events
    T = max(with_known_time(plan, e)["label_known_at"] for e in events) + 1
    term = plan.label_hops[1].key.key
    for terminal in sorted({e["terminal_id"] for e in events})[:20]:
        got = label_stats(plan, redis_store.read(term, terminal, T), T)
        mine = {(e["transaction_id"]): e for e in events if e["terminal_id"] == terminal}
        known = np.array([with_known_time(plan, e)["label_known_at"] for e in mine.values()])
        assert got[(30 * DAY, "count")] == float(((known >= T - 30 * DAY) & (known < T)).sum())
    print(f"label ingest: {len(values)} events ({len(distinct)} distinct), killed at {killed_at} committed, "
          f"{n} label windows identical to one clean pass")
