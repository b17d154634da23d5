"""Soak (only with --soak): 10 minutes of HTTP load at 80 % of the measured maximum QPS of
`relstream serve`, with the Kafka path (`relstream score`) scoring a steady trickle at the same
time. Requirements: 0 errors (every HTTP answer 200, every Kafka fact scored), and resident memory
of serve, score and Triton (each with its child processes) growing by less than 5 % from the
end of the warm-up to the end of the run.

    python3 -m pytest tests/e2e/test_soak.py --soak -s        # RELSTREAM_SOAK_MINUTES=10 by default

Writes bench/results/e2e_soak.json and e2e_soak.png (RSS and latency over time).
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from relstream.demo.events import RateProducer, ScoreCollector, wait_group_members
from relstream.demo.tools import wait_http
from relstream.stack.process import rss_bytes
from relstream.stack import free_port

from .faults import synthetic_transactions

pytestmark = pytest.mark.soak

TOKEN = "e2e-soak-token-0123456789"
MINUTES = float(os.environ.get("RELSTREAM_SOAK_MINUTES", 10))
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def open_loop_step(url: str, bodies: list[bytes], qps: float, seconds: float) -> dict:
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.serve_load import open_loop
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    return asyncio.run(open_loop(url, bodies, qps, 0.0, seconds, headers))


def measure_max_qps(url: str, bodies: list[bytes], log) -> tuple[float, list[dict]]:
    """Step the offered rate up until the server stops keeping up; the best sustained rate."""
    steps, best = [], 0.0
    for qps in (100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500):
        step = open_loop_step(url, bodies, qps, 10.0)
        lat = step["latency_from_schedule"]
        log(f"[soak] max-QPS probe {qps}: achieved {step['achieved_qps']:.0f}, p99 {lat.get('p99_ms', 0):.1f} ms, "
            f"errors {step['errors']}")
        steps.append({"offered": qps, "achieved": step["achieved_qps"], "p99_ms": lat.get("p99_ms"),
                      "errors": step["errors"]})
        if step["errors"] or step["achieved_qps"] < 0.9 * qps or (lat.get("p99_ms") or 1e9) > 500:
            break
        best = step["achieved_qps"]
    return best, steps


def test_soak_http_and_kafka(e2e, soak):
    import orjson

    from bench.payloads import make_payloads
    from rti_store import RedisWindowStore
    from schemas.plan_loading import builtin_plan

    plan = builtin_plan("fraud")
    payloads = make_payloads(128)
    store = RedisWindowStore(plan, e2e.redis())
    store.append(payloads.append_items(plan))
    bodies = [orjson.dumps(r) for r in payloads.rows]

    port = free_port()
    serve = e2e.service("serve", "serve", "--port", str(port), env={"RELSTREAM_API_TOKEN": TOKEN})
    scorer = e2e.service("score", "score")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz", 120, check=lambda: serve.check_alive("serve"))
    wait_group_members(e2e.stack.kafka_bootstrap, [e2e.score_group], 90, check=lambda: scorer.check_alive("score"))
    triton_pid = e2e.stack.pids()["triton"]

    log = lambda m: print(m, flush=True)  # noqa: E731
    max_qps, probe = measure_max_qps(f"{url}/v1/score", bodies, log)
    assert max_qps > 0, f"serve could not sustain even the first probe rate: {probe}"
    qps = round(0.8 * max_qps)
    log(f"[soak] max sustained {max_qps:.0f} QPS -> soak at {qps} QPS for {MINUTES:g} min")

    # background: RSS samples every 5 s; a Kafka trickle of 20 facts/s through the scorer
    samples: list[dict] = []
    stop = threading.Event()

    def sample():
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append({"t": time.monotonic() - t0, "serve": rss_bytes(serve.pid), "score": rss_bytes(scorer.pid),
                            "triton": rss_bytes(triton_pid)})
            stop.wait(5.0)

    events = synthetic_transactions(int(MINUTES * 60 * 20) + 100, first_id=9_000_000, seed=5)
    collector = ScoreCollector(e2e.stack.kafka_bootstrap, e2e.topics["scores"], e2e.codec)
    collector.start()
    producer = RateProducer(e2e.stack.kafka_bootstrap, e2e.codec)
    held: dict = {}
    kafka_thread = threading.Thread(target=lambda: held.setdefault(
        "produced", producer.produce(e2e.topics["facts"], events, rate=20, stop=stop)), daemon=True)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    kafka_thread.start()
    segments = []
    t_end = time.monotonic() + MINUTES * 60
    try:
        while time.monotonic() < t_end - 1:
            seconds = min(60.0, t_end - time.monotonic())
            step = open_loop_step(f"{url}/v1/score", bodies, qps, seconds)
            lat = step["latency_from_schedule"]
            segments.append({"sent": step["sent"], "ok": step["ok"], "errors": step["errors"],
                             "error_kinds": step["error_kinds"], "achieved_qps": step["achieved_qps"],
                             "p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms")})
            log(f"[soak] segment {len(segments)}: {step['ok']}/{step['sent']} ok, p50 {lat.get('p50_ms', 0):.1f} ms, "
                f"p99 {lat.get('p99_ms', 0):.1f} ms, RSS serve {samples[-1]['serve'] / 2**20:.0f} MiB, "
                f"score {samples[-1]['score'] / 2**20:.0f} MiB, triton {samples[-1]['triton'] / 2**20:.0f} MiB")
            serve.check_alive("serve")
            scorer.check_alive("score")
    finally:
        stop.set()
        kafka_thread.join(30)
        sampler.join(10)
    producer.flush()
    produced = held["produced"]
    sent_ids = [str(e["transaction_id"]) for e, at in zip(events, produced) if at >= 0]
    missing = collector.wait_for(sent_ids, 120)
    collector.stop()

    warm = [s for s in samples if s["t"] >= 60.0] or samples
    head, tail = warm[:6], warm[-6:]
    growth = {k: float(np.median([s[k] for s in tail]) / np.median([s[k] for s in head]) - 1) for k in
              ("serve", "score", "triton")}
    http_errors = sum(s["errors"] for s in segments)
    result = {"minutes": MINUTES, "max_qps": max_qps, "probe": probe, "soak_qps": qps, "segments": segments,
              "http_requests": sum(s["sent"] for s in segments), "http_errors": http_errors,
              "kafka_facts": len(sent_ids), "kafka_unscored": len(missing),
              "kafka_duplicates": collector.duplicates, "rss_growth": growth, "rss_samples": samples,
              "load_avg_end": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e_soak.json").write_text(json.dumps(result, indent=1))
    _plot(result, RESULTS / "e2e_soak.png")
    log(f"[soak] {result['http_requests']} HTTP requests at {qps} QPS, {http_errors} errors; "
        f"{result['kafka_facts']} Kafka facts, {len(missing)} unscored; RSS growth "
        + ", ".join(f"{k} {v:+.2%}" for k, v in growth.items()))
    assert http_errors == 0, [s["error_kinds"] for s in segments if s["errors"]]
    assert not missing and collector.duplicates == 0
    assert all(g < 0.05 for g in growth.values()), growth


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=False)
    t = [s["t"] / 60 for s in result["rss_samples"]]
    for k in ("serve", "score", "triton"):
        a.plot(t, [s[k] / 2**20 for s in result["rss_samples"]], label=k)
    a.set_xlabel("minutes")
    a.set_ylabel("RSS (MiB, with children)")
    a.legend()
    a.grid(alpha=0.3)
    a.set_title(f"soak at {result['soak_qps']} QPS (80 % of max {result['max_qps']:.0f})")
    seg = list(range(1, len(result["segments"]) + 1))
    b.plot(seg, [s["p50_ms"] for s in result["segments"]], label="p50")
    b.plot(seg, [s["p99_ms"] for s in result["segments"]], label="p99")
    b.set_xlabel("minute")
    b.set_ylabel("latency (ms)")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
