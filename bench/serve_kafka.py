"""The Kafka path of ``bench_serve.py``: produce-to-score-consumed latency at a fixed rate against a
`relstream score` process, split into its parts, with the scorer's stage means from its /metrics."""
from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path

from bench.payloads import Payloads
from bench.serve_env import ROOT, service_env, stop
from bench.serve_load import cpu_seconds, summary_ms
from relstream.stack.process import Process


def kafka_stage_means(url: str) -> dict:
    """The scorer's per-stage means (ms, whole run) and transactions from its /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    sums: dict[str, float] = {}
    families = list(text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text))
    for fam in families:
        for smp in fam.samples:
            if smp.name.startswith("relstream_scorer_stage_seconds_") and smp.labels.get("path") == "kafka" \
                    and smp.name.rsplit("_", 1)[1] in ("sum", "count"):
                sums[f"{smp.labels['stage']}_{smp.name.rsplit('_', 1)[1]}"] = smp.value
            elif smp.name in ("relstream_scorer_batch_size_sum", "relstream_scorer_batch_size_count"):
                sums[smp.name] = smp.value
    out = {f"mean_{k[:-4]}_ms": 1e3 * v / sums[f"{k[:-4]}_count"] for k, v in sums.items()
           if k.endswith("_sum") and not k.startswith("relstream") and sums.get(f"{k[:-4]}_count")}
    out.update({f"{k[:-6]}_count": int(v) for k, v in sums.items() if k.endswith("_count")
                and not k.startswith("relstream")})
    if sums.get("relstream_scorer_batch_size_count"):
        out["mean_batch_size"] = sums["relstream_scorer_batch_size_sum"] / sums["relstream_scorer_batch_size_count"]
    out["slow_batches"] = slow_stage_counts(families)
    return out


def slow_stage_counts(families, over_s: float = 0.05) -> dict:
    """Per stage of the Kafka path: how many of its observations took longer than ``over_s`` (the
    histogram bucket at or above it): where the tail of the end-to-end latency comes from."""
    counts: dict[str, float] = {}
    below: dict[str, float] = {}
    for fam in families:
        for smp in fam.samples:
            if smp.name != "relstream_scorer_stage_seconds_bucket" or smp.labels.get("path") != "kafka":
                continue
            stage, le = smp.labels["stage"], float(smp.labels["le"])
            if le == float("inf"):
                counts[stage] = smp.value
            elif le >= over_s and (stage not in below or le < below[stage][0]):
                below[stage] = (le, smp.value)
    return {stage: int(total - below.get(stage, (0, total))[1]) for stage, total in counts.items()}


def kafka_latency(stack, config: Path, topics, codec, payloads: Payloads, rate: float, warmup: float,
                  duration: float, log_path: Path, log, producer_linger_ms: float = 5.0) -> dict:
    from confluent_kafka import Consumer, Producer

    from kafka_io.polling import consume_ready
    facts, scores, _ = topics
    from relstream.stack import free_port
    metrics_port = free_port()
    argv = [sys.executable, "-m", "relstream.cli", "--config", str(config), "score", "--log-level", "WARNING",
            "--metrics-port", str(metrics_port)]
    proc = Process("score", argv, log_path, env=service_env(), cwd=ROOT).start()
    load_before = os.getloadavg()
    produced: dict[str, float] = {}
    latencies: list[tuple[float, float]] = []  # (produce time, latency)
    # where the time goes, per score: produced -> received by the scorer -> record built (the
    # record's own latency_ms) -> consumed downstream (the transaction commit + the consumer's fetch)
    parts: list[tuple[float, float, float, float]] = []  # (produce time, to scorer, in scorer, to consumer)
    stop_consumer = threading.Event()
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100, "session.timeout.ms": 6000})
    consumer.subscribe([scores])

    def consume():
        while not stop_consumer.is_set():
            for msg in consume_ready(consumer, 500, 0.05):  # no fill-the-batch wait (streams/polling.py)
                if msg.error() is not None:
                    continue
                now = time.time()
                _, rec = codec.decode(msg.value())
                t = produced.get(rec["event_id"])
                if t is not None:
                    latencies.append((t, now - t))
                    built = rec["scored_at"] / 1e9
                    in_scorer = rec["latency_ms"] / 1e3
                    parts.append((t, built - in_scorer - t, in_scorer, now - built))

    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "enable.idempotence": True,
                         "linger.ms": producer_linger_ms})
    try:
        # wait until the scorer answers (group joined, model reachable)
        probe_deadline = time.monotonic() + 90
        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        i = 0
        while not latencies:
            if not proc.alive or time.monotonic() > probe_deadline:
                raise RuntimeError(f"scorer did not answer:\n{log_path.read_text()[-3000:]}")
            row = {**payloads.rows[i % len(payloads.rows)], "transaction_id": 10**12 + i}
            produced[str(row["transaction_id"])] = time.time()
            producer.produce(facts, key=str(row["customer_id"]).encode(), value=codec.encode("transactions-value", row))
            producer.flush(5)
            i += 1
            time.sleep(0.2)
        latencies.clear()
        parts.clear()
        cpu_pids = {"score": proc.pid, **{k: v for k, v in stack.pids().items()}}
        cpu_before = cpu_seconds(cpu_pids)
        n_total = int(rate * (warmup + duration))
        t_start = time.time()
        t0 = time.monotonic()
        encoded = []
        for k in range(len(payloads.rows)):
            encoded.append(payloads.rows[k])
        for k in range(n_total):
            target = t0 + k / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            row = {**encoded[k % len(encoded)], "transaction_id": 2 * 10**12 + k}
            value = codec.encode("transactions-value", row)
            produced[str(row["transaction_id"])] = time.time()
            producer.produce(facts, key=str(row["customer_id"]).encode(), value=value)
            producer.poll(0)
        producer.flush(30)
        send_span = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while len(latencies) < n_total and time.monotonic() < deadline:
            time.sleep(0.1)
        cpu_after = cpu_seconds(cpu_pids)
        stages = kafka_stage_means(f"http://127.0.0.1:{metrics_port}")
    finally:
        stop_consumer.set()
        time.sleep(0.2)
        consumer.close()
        stop(proc)
    window = [lat for t, lat in latencies if t >= t_start + warmup]
    expected = sum(1 for key, t in produced.items() if key.startswith("2") and len(key) == 13
                   and t >= t_start + warmup)
    cpu = {k: 1e3 * (cpu_after[k] - cpu_before[k]) / max(1, n_total) for k in cpu_pids}
    cpu["all"] = sum(cpu.values())  # every process of the path (the load generator excluded)
    res = {"rate": rate, "cpu_ms_per_event": cpu, "scorer_stages": stages,
           "load_avg": {"before": load_before, "after": os.getloadavg()},
           "produced_in_window": expected, "scored_in_window": len(window),
           "achieved_produce_rate": n_total / send_span, "latency": summary_ms(window),
           "latency_parts": {name: summary_ms([p[i] for p in parts if p[0] >= t_start + warmup])
                             for i, name in ((1, "produced_to_scorer"), (2, "in_scorer"),
                                             (3, "built_to_consumed"))},
           "missing": expected - len(window)}
    log(f"  Kafka at {rate:.0f} ev/s: p50 {res['latency'].get('p50_ms', float('nan')):.1f} ms, "
        f"p99 {res['latency'].get('p99_ms', float('nan')):.1f} ms, {res['missing']} missing; CPU ms/event: "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    return res
