"""Smoke run of the local stack: up, one event through a consumer group, one inference, down.

    python3 -m relstream.demo_smoke      (same as `relstream smoke`)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

import numpy as np

from .config import Config, ConfigError, load_config, stack_from_config
from .stack import SMOKE_MODEL_NAME, StackError, install_smoke_model


def _step(results: list, name: str, fn):
    t0 = time.monotonic()
    try:
        detail = fn()
        results.append((name, "ok", time.monotonic() - t0, detail))
        return True
    except Exception as exc:  # reported in the summary; the run continues to cleanup
        results.append((name, "FAILED", time.monotonic() - t0, f"{type(exc).__name__}: {exc}"))
        return False


def kafka_round_trip(bootstrap: str) -> str:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    topic = f"relstream.smoke.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    event = {"event_id": uuid.uuid4().hex, "amount": 12.5, "ts_ns": time.time_ns()}
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=b"smoke", value=json.dumps(event).encode())
    if producer.flush(30):
        raise RuntimeError("produce not acknowledged within 30 s")
    group = f"relstream-smoke-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
        if msg is None or msg.error():
            raise RuntimeError(f"no event consumed: {msg.error() if msg else 'timeout'}")
        if json.loads(msg.value()) != event:
            raise RuntimeError("consumed event differs from the produced one")
        consumer.commit(message=msg, asynchronous=False)
        committed = consumer.committed(consumer.assignment(), timeout=10)[0].offset
    finally:
        consumer.close()
    return f"topic {topic}, group {group}, committed offset {committed}"


def triton_inference(http_url: str) -> str:
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(http_url.split("://", 1)[-1])
    client.load_model(SMOKE_MODEL_NAME)
    try:
        x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer(SMOKE_MODEL_NAME, [inp]).as_numpy("OUTPUT0")
        if not np.array_equal(out, x + 1):
            raise RuntimeError(f"expected {x + 1}, got {out}")
    finally:
        client.unload_model(SMOKE_MODEL_NAME)
    return f"{SMOKE_MODEL_NAME}({x.tolist()}) = {out.tolist()}"


def run_smoke(cfg: Config, keep: bool = False, out=sys.stdout) -> int:
    st = stack_from_config(cfg)
    was_running = st.pids()
    results: list = []
    print(f"relstream smoke run (run dir {st.run_dir})", file=out, flush=True)
    try:
        install_smoke_model(st.model_repository)
        ok = _step(results, "stack up", lambda: (
            f"healthy in {max(st.up().values()):.1f}s: " + ", ".join(
                f"{k} {v}" for k, v in st.addresses().items() if k != "triton_metrics")))
        if ok:
            if "kafka" in st.components:
                _step(results, "kafka produce+consume", lambda: kafka_round_trip(st.kafka_bootstrap))
            if "triton" in st.components:
                _step(results, "triton inference", lambda: triton_inference(st.triton_http_url))
    finally:
        if not keep and not was_running:
            _step(results, "stack down", lambda: (st.down(), "no process left")[1])
    width = max(len(r[0]) for r in results)
    print("", file=out)
    for name, state, secs, detail in results:
        print(f"  {name:<{width}}  {state:<6} {secs:6.2f}s  {detail}", file=out)
    failed = [r for r in results if r[1] != "ok"]
    print(f"\nsmoke run {'PASSED' if not failed else 'FAILED'}", file=out)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m relstream.demo_smoke",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="PATH", help="YAML config file")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)
    try:
        return run_smoke(load_config(args.config), keep=args.keep)
    except (ConfigError, StackError) as exc:
        print(f"relstream smoke: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
