"""Ingest hot-path client choice: confluent-kafka (librdkafka) vs aiokafka (faust-streaming's
Kafka transport), against the real local broker.

Both consume the same N records (120-byte values) from one topic, from the beginning, through
a consumer group, in batches; we report records/s (median of R runs) and the ratio. aiokafka is
the layer faust-streaming consumes through, so faust's agents can only be as fast as it (they add
their own per-event dispatch on top).

    python3 bench/bench_kafka_clients.py [--records 200000] [--runs 3]

Prints JSON and writes bench/results/kafka_clients.png.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relstream.stack import LocalStack  # noqa: E402


def fill_topic(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "batch.num.messages": 10000})  # uncompressed: aiokafka lacks lz4 here
    value = b"x" * 120
    for i in range(n):
        while True:
            try:
                producer.produce(topic, key=str(i % 1000).encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def consume_confluent(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-ck-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got, t0 = 0, None
    while got < n:
        batch = c.consume(num_messages=1000, timeout=1.0)
        if batch and t0 is None:
            t0 = time.perf_counter()
        got += sum(1 for m in batch if m.error() is None)
    took = time.perf_counter() - t0
    c.commit(asynchronous=False)
    c.close()
    return n / took


def consume_aiokafka(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                             group_id=f"bench-aio-{uuid.uuid4().hex}",
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        got, t0 = 0, None
        try:
            while got < n:
                batches = await c.getmany(timeout_ms=1000, max_records=1000)
                if batches and t0 is None:
                    t0 = time.perf_counter()
                got += sum(len(v) for v in batches.values())
            took = time.perf_counter() - t0
            await c.commit()
        finally:
            await c.stop()
        return n / took

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        st = LocalStack(Path(tmp), components=("kafka",), stop_with_owner=True)
        st.up()
        try:
            topic = f"bench-clients-{uuid.uuid4().hex[:6]}"
            fill_topic(st.kafka_bootstrap, topic, args.records)
            rates = {"confluent-kafka": [], "aiokafka (faust transport)": []}
            for _ in range(args.runs):  # interleaved so drift hits both alike
                rates["confluent-kafka"].append(
                    consume_confluent(st.kafka_bootstrap, topic, args.records))
                rates["aiokafka (faust transport)"].append(
                    consume_aiokafka(st.kafka_bootstrap, topic, args.records))
        finally:
            st.down()
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"records": args.records, "runs": args.runs,
              "records_per_s": {k: [round(x) for x in v] for k, v in rates.items()},
              "median_records_per_s": {k: round(v) for k, v in med.items()},
              "ratio_confluent_over_aiokafka": round(
                  med["confluent-kafka"] / med["aiokafka (faust transport)"], 2)}
    print(json.dumps(result, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(med), list(med.values()), color=["tab:blue", "tab:orange"])
    ax.set_ylabel("records/s consumed (median)")
    ax.set_title(f"Kafka consume throughput, {args.records} x 120 B, 1 partition")
    fig.tight_layout()
    fig.savefig(out / "kafka_clients.png", dpi=120)


if __name__ == "__main__":
    main()
