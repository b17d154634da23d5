"""Faults on the real stack: kill -9 of `relstream ingest`, SIGTERM, Redis going away mid-stream."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from confluent_kafka import Consumer, TopicPartition

from relstream.stack import ComponentSettings
from relstream.stack.process import Process
from rti_store import RedisWindowStore
from streams.synthetic import TRANSACTIONS_SUBJECT, produce_values, synthetic_transactions


def _write_config(tmp_path, stack, registry_dir, topic, dlq, group, batch_size=200) -> str:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
        "redis": {"url": stack.redis_url},
        "topics": {"dlq": dlq},
        "ingest": {"topics": {topic: "transactions"}, "group_id": group, "batch_size": batch_size,
                   "batch_timeout_s": 0.05, "registry": str(registry_dir), "shutdown_grace_s": 5.0,
                   "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}},
    }
    path = tmp_path / "relstream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


class Ingest:
    """A real `relstream ingest` process (the one process wrapper, relstream.stack.process.Process):
    its log is read to await start-up, its stdout (the final stats) kept apart."""

    _count = 0

    def __init__(self, config: str, *extra: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELSTREAM")}
        Ingest._count += 1
        logs = Path(config).parent / "ingest-logs"
        self.process = Process(f"ingest-{Ingest._count}", [sys.executable, "-m", "relstream", "--config", config,
                                                           "ingest", "--log-level", "WARNING", *extra],
                               logs / f"ingest-{Ingest._count}.log", out_path=logs / f"ingest-{Ingest._count}.out",
                               env=env, cwd=os.getcwd()).start()
        self.proc = self.process.proc

    @property
    def stderr(self) -> list[str]:
        return self.process.tail(400).splitlines(keepends=True)

    def started(self) -> bool:
        if not self.process.alive:
            raise AssertionError(f"ingest exited ({self.proc.returncode}): {self.process.tail(40)}")
        return self.process.log_count("relstream ingest:") > 0

    def kill9(self) -> None:
        self.process.kill()

    def terminate(self, timeout: float = 30.0) -> tuple[int, str]:
        self.process.signal_group(signal.SIGTERM)
        self.proc.wait(timeout)
        return self.proc.returncode, self.process.output()


def _paced_produce(prod, topic, values, slice_size=100, pause=0.03):
    for i in range(0, len(values), slice_size):
        produce_values(prod, topic, values[i:i + slice_size])
        time.sleep(pause)


class Feeder(threading.Thread):
    """Produces records at a steady pace while the consumer runs; ``sent`` = acknowledged so far."""

    def __init__(self, prod, topic, values, slice_size: int, pause: float):
        super().__init__(daemon=True)
        self.args_ = (prod, topic, values, slice_size, pause)
        self.sent = 0

    def run(self) -> None:
        prod, topic, values, slice_size, pause = self.args_
        for i in range(0, len(values), slice_size):
            part = values[i:i + slice_size]
            produce_values(prod, topic, part)
            self.sent += len(part)
            time.sleep(pause)


def _wait(cond, timeout: float, what: str, ingest: Ingest | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ingest is not None:
            ingest.started()  # raises if the process died
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_kill_9_at_random_moments_then_resume_loses_and_duplicates_nothing(
        stack, new_topic, redis_client, plan, codec, registry_dir, ih, kill_rounds, tmp_path):
    partitions, per_round = 3, 900
    topic, dlq = new_topic("kill", partitions=partitions), new_topic("kill-dlq")
    group = f"g-{topic}"
    config = _write_config(tmp_path, stack, registry_dir, topic, dlq, group, batch_size=150)
    events = synthetic_transactions(per_round * (kill_rounds + 1), seed=100 + kill_rounds,
                                    n_customers=250, n_terminals=300)
    values = ih.encode_all(codec, TRANSACTIONS_SUBJECT, events)
    chunks = [values[i * per_round:(i + 1) * per_round] for i in range(kill_rounds + 1)]
    prod = ih.producer(stack.kafka_bootstrap)
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, partitions)
    rng = random.Random(7)
    produce_values(prod, topic, chunks[0])
    produced = len(chunks[0])
    kills = []
    # static membership: a restarted process takes its partitions over at once instead of
    # waiting for the killed member's session to time out (also what a k8s deployment wants)
    member = ("--kafka-config", f"group.instance.id=ingest-{topic}")
    try:
        for r in range(kill_rounds):
            before = probe.total()
            t_round = time.monotonic()
            ingest = Ingest(config, *member)
            _wait(ingest.started, 60, f"round {r}: start-up", ingest)
            t_started = time.monotonic()
            feeder = Feeder(prod, topic, chunks[r + 1], slice_size=30, pause=0.1)  # ~3 s of traffic
            feeder.start()
            _wait(lambda: probe.total() > before, 60, f"round {r}: first commit", ingest)
            print(f"round {r}: started after {t_started - t_round:.1f}s, first commit after "
                  f"{time.monotonic() - t_started:.1f}s more")
            # a random moment while records still flow: mid-batch, mid-append or mid-commit
            kill_at = time.monotonic() + rng.uniform(0.0, 1.5)
            while time.monotonic() < kill_at and feeder.is_alive():
                time.sleep(0.01)
            ingest.kill9()
            kills.append((probe.total(), produced + feeder.sent))
            feeder.join()
            produced += len(chunks[r + 1])
        # resume and drain
        ends = ih.end_offsets(stack.kafka_bootstrap, topic, partitions)
        assert sum(ends.values()) == len(values)
        ingest = Ingest(config, *member)
        _wait(ingest.started, 60, "start-up", ingest)
        probe.wait_for(ends, timeout=120)
        rc, _out = ingest.terminate()
        assert rc == 0, "".join(ingest.stderr)[-2000:]
    finally:
        probe.close()
    # the kills really hit a live stream: records were acknowledged by Kafka but not yet
    # committed by the group at the moment of (at least one) kill
    assert any(committed < sent for committed, sent in kills), kills
    n = ih.assert_same_windows(ih.single_pass(plan, codec, values), RedisWindowStore(plan, redis_client),
                               redis_client)
    print(f"kill -9 x{kill_rounds}: (committed, produced) at each kill {kills}; {n} windows identical")
    assert produced == len(values)


def test_sigterm_finishes_the_batch_commits_and_exits_cleanly(stack, new_topic, redis_client, plan, codec,
                                                              registry_dir, ih, tmp_path):
    topic, dlq = new_topic("term", partitions=2), new_topic("term-dlq")
    group = f"g-{topic}"
    config = _write_config(tmp_path, stack, registry_dir, topic, dlq, group, batch_size=100)
    values = ih.encode_all(codec, TRANSACTIONS_SUBJECT, synthetic_transactions(3000, seed=3))
    prod = ih.producer(stack.kafka_bootstrap)
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 2)
    ingest = Ingest(config)
    feeder = threading.Thread(target=_paced_produce, args=(prod, topic, values, 100, 0.1))
    feeder.start()
    try:
        _wait(lambda: probe.total() >= 300, 60, "commits", ingest)
        rc, out = ingest.terminate()  # mid-stream
    finally:
        feeder.join()
    assert rc == 0, "".join(ingest.stderr)[-2000:]
    stats = json.loads(out.strip().splitlines()[-1])
    committed = probe.committed()
    probe.close()
    assert 0 < stats["records"] == sum(committed.values()) < len(values)
    # exactly the committed prefix of each partition is in the windows: nothing in flight was lost
    reader = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"read-{topic}",
                       "enable.auto.commit": False})
    reader.assign([TopicPartition(topic, p, 0) for p in range(2)])
    prefix = []
    deadline = time.monotonic() + 30
    while len(prefix) < sum(committed.values()) and time.monotonic() < deadline:
        for msg in reader.consume(500, 0.5):
            if msg.error() is None and msg.offset() < committed[msg.partition()]:
                prefix.append(msg.value())
    reader.close()
    ih.assert_same_windows(ih.single_pass(plan, codec, prefix), RedisWindowStore(plan, redis_client), redis_client)


def test_redis_outage_mid_stream_is_retried_and_nothing_is_lost(stack, stack_factory, new_topic, plan, codec,
                                                                registry_dir, ih):
    import redis

    private = stack_factory(components=("redis",), settings=ComponentSettings(redis_persistence=True))
    client = redis.Redis.from_url(private.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    store = RedisWindowStore(plan, client)
    topic, dlq = new_topic("outage", partitions=2), new_topic("outage-dlq")
    group = f"g-{topic}"
    values = ih.encode_all(codec, TRANSACTIONS_SUBJECT, synthetic_transactions(3000, seed=9))
    prod = ih.producer(stack.kafka_bootstrap)
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 2)
    run = ih.Running(ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store, topic, dlq, group,
                                     batch_size=300))
    try:
        produce_values(prod, topic, values[:1000])
        probe.wait_for(ih.end_offsets(stack.kafka_bootstrap, topic, 2))
        private.stop_component("redis")  # mid-stream: more records arrive while it is down
        produce_values(prod, topic, values[1000:2000])
        committed_while_down = probe.total()
        time.sleep(3.0)
        assert probe.total() == committed_while_down == 1000  # nothing committed past the outage
        retries = run.service.loop.stats.store_retries
        assert retries > 0
        private.start_component("redis")
        produce_values(prod, topic, values[2000:])
        probe.wait_for(ih.end_offsets(stack.kafka_bootstrap, topic, 2))
    finally:
        stats = run.stop()
    assert stats.records >= len(values) and stats.store_retries >= retries
    ih.assert_same_windows(ih.single_pass(plan, codec, values), store, client)


def test_stop_while_redis_is_down_gives_up_after_the_grace_without_committing(
        stack, stack_factory, new_topic, plan, codec, registry_dir, ih):
    import redis

    private = stack_factory(components=("redis",), settings=ComponentSettings(redis_persistence=True))
    client = redis.Redis.from_url(private.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    store = RedisWindowStore(plan, client)
    topic, dlq = new_topic("downstop"), new_topic("downstop-dlq")
    group = f"g-{topic}"
    values = ih.encode_all(codec, TRANSACTIONS_SUBJECT, synthetic_transactions(1500, seed=12))
    prod = ih.producer(stack.kafka_bootstrap)
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 1)
    produce_values(prod, topic, values[:500])
    run = ih.Running(ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store, topic, dlq, group,
                                     batch_size=100))
    probe.wait_for({0: 500})
    private.stop_component("redis")
    produce_values(prod, topic, values[500:1000])
    _wait(lambda: run.service.loop.stats.store_retries > 0, 30, "retries against the stopped Redis")
    t0 = time.monotonic()
    stats = run.stop()  # grace is 2 s in make_service
    assert time.monotonic() - t0 < 15
    assert probe.committed() == {0: 500}  # nothing past the unacknowledged batches
    assert stats.records == 500

    private.start_component("redis")
    produce_values(prod, topic, values[1000:])
    run = ih.Running(ih.make_service(plan, stack.kafka_bootstrap, registry_dir, store, topic, dlq, group,
                                     batch_size=100))
    try:
        probe.wait_for({0: len(values)})
    finally:
        run.stop()
        probe.close()
    ih.assert_same_windows(ih.single_pass(plan, codec, values), store, client)
