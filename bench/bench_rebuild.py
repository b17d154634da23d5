"""Time to rebuild lost window state from Kafka, and what Redis persistence (AOF) costs.

For each Redis setting (AOF on, as the local stack and docker-compose run it by default, and
off) and each history size (``--days`` of events at ``--events-per-day``, event times spread
over those days), the bench:

1. produces the events to a 2-partition topic (Avro, as ingest reads them);
2. runs one real ingest service (``streams.ingest.IngestService``, in a thread, real Kafka and
   Redis started by the bench) until the store is complete and ingest has caught up;
3. ``--runs`` times: FLUSHALL while ingest keeps running (a Redis restart without persistence,
   or a failover to an empty replica, looks the same to ingest), then polls the completeness
   marker every 5 ms until the store is complete again. Reported: the time until ingest noticed
   (marker claimed), and until the store was complete again (median of the runs), and the
   records replayed per second.

    python3 bench/bench_rebuild.py [--days 1,3,7] [--events-per-day 20000] [--runs 3]

Writes bench/results/rebuild.json and rebuild.png.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_ingest import produce_all  # noqa: E402

DAY_S = 86_400


def wait_complete(store, timeout_s: float = 600.0, poll_s: float = 0.005) -> tuple[float, float | None]:
    """Poll the marker; returns (seconds until complete, seconds until it stopped being lost)."""
    from rti_store import Completeness

    t0 = time.perf_counter()
    noticed = None
    while time.perf_counter() - t0 < timeout_s:
        state = store.marker().completeness
        if noticed is None and state is not Completeness.LOST:
            noticed = time.perf_counter() - t0
        if state is Completeness.COMPLETE:
            return time.perf_counter() - t0, noticed
        time.sleep(poll_s)
    raise TimeoutError(f"store not complete after {timeout_s} s")


def one_size(plan, stack, registry: Path, codec, days: float, per_day: int, runs: int) -> dict:
    import redis

    from rti_store import RedisWindowStore
    from streams.ingest import IngestService, IngestSettings, open_codec
    from streams.synthetic import TRANSACTIONS_SUBJECT, synthetic_transactions

    n = int(days * per_day)
    events = synthetic_transactions(n, seed=int(days * 10), n_customers=5_000, n_terminals=10_000,
                                    span_s=days * DAY_S)
    topic = f"bench-rebuild-{uuid.uuid4().hex[:8]}"
    produce_all(stack.kafka_bootstrap, topic, [codec.encode(TRANSACTIONS_SUBJECT, e) for e in events], 2)
    client = redis.Redis.from_url(stack.redis_url)
    client.flushall()
    store = RedisWindowStore(plan, client)
    svc_codec, errors = open_codec(registry, 1 << 20)
    settings = IngestSettings(topics={topic: "transactions"}, dlq_topic=topic + "-dlq",
                              group_id=f"bench-{uuid.uuid4().hex[:8]}", batch_size=5000, batch_timeout_s=0.05,
                              state_check_interval_s=0.2)
    svc = IngestService(plan, settings, {"bootstrap.servers": stack.kafka_bootstrap}, store, svc_codec, errors,
                        consumer_extra={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    thread = threading.Thread(target=svc.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        first, _ = wait_complete(store)  # the first fill is a rebuild from an empty store too
        rebuilds = []
        for _ in range(runs):
            client.flushall()
            total, noticed = wait_complete(store)
            rebuilds.append({"seconds": total, "noticed_s": noticed})
        rows = client.dbsize()
        used_memory = client.info("memory")["used_memory"]
        aof_bytes = client.info("persistence").get("aof_current_size")
    finally:
        svc.stop()
        thread.join(60)
    med = statistics.median(r["seconds"] for r in rebuilds)
    return {"days": days, "events": n, "window_keys": rows, "used_memory_bytes": used_memory,
            "aof_bytes": aof_bytes, "first_fill_s": first,
            "median_rebuild_s": med, "median_noticed_s": statistics.median(r["noticed_s"] for r in rebuilds),
            "median_records_per_s": n / med, "runs": rebuilds}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, rows in result["by_persistence"].items():
        ax.plot([r["days"] for r in rows], [r["median_rebuild_s"] for r in rows], marker="o",
                label=f"Redis AOF {mode}")
    ax.set_xlabel(f"days of history replayed ({result['config']['events_per_day']:,} events/day)")
    ax.set_ylabel("store empty -> complete again (s, median)")
    ax.set_title("relstream ingest: rebuild of lost window state from Kafka (one ingest process)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", default="1,3,7", help="history sizes in days (the fraud plan looks back 7)")
    ap.add_argument("--events-per-day", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3, help="rebuilds per size (median reported)")
    ap.add_argument("--persistence", default="on,off", help="Redis AOF settings to compare")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    from relstream.stack import ComponentSettings, LocalStack
    from schemas.plan_loading import builtin_plan
    from schemas.registry import AvroCodec, FileSchemaRegistry, load_builtin_schemas

    plan = builtin_plan("fraud")
    tmp = Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    registry = tmp / "registry"
    reg = FileSchemaRegistry(registry)
    load_builtin_schemas(reg)
    codec = AvroCodec(reg)
    days = [float(d) for d in args.days.split(",")]
    result = {"config": {"days": days, "events_per_day": args.events_per_day, "runs": args.runs,
                         "loadavg_start": os.getloadavg()}, "by_persistence": {}}
    for mode in args.persistence.split(","):
        stack = LocalStack(tmp / f"stack-{mode}", components=("kafka", "redis"), stop_with_owner=True,
                           settings=ComponentSettings(redis_persistence=mode == "on"))
        stack.up()
        try:
            rows = []
            for d in days:
                row = one_size(plan, stack, registry, codec, d, args.events_per_day, args.runs)
                rows.append(row)
                print(f"AOF {mode}: {d:g} days = {row['events']:,} events: rebuilt in {row['median_rebuild_s']:.2f} s "
                      f"(noticed after {row['median_noticed_s']:.2f} s; {row['median_records_per_s']:,.0f} records/s)",
                      file=sys.stderr, flush=True)
            result["by_persistence"][mode] = rows
        finally:
            stack.down()
    result["env"] = {"loadavg_end": os.getloadavg(), "cpus_online": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rebuild.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "rebuild.png")
    print(json.dumps({m: [{k: v for k, v in r.items() if k != "runs"} for r in rows]
                      for m, rows in result["by_persistence"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
