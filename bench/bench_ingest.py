"""Ingestion throughput of `relstream ingest`: Kafka -> decode -> Redis windows -> commit.

Pre-produces N synthetic transactions (Avro, Confluent wire format) to a topic, then times the
real ingest loop (``streams.consumer.IngestLoop`` with the real RedisWindowStore, DLQ producer and
manual commits) from the first consumed batch to the commit of the last one, for several batch
sizes. Each timed pass runs in its own worker process, pinned to one CPU core (``--cpus``;
librdkafka's threads inherit it); Kafka and Redis run as separate processes.

Before/after, back to back: ``--baseline-tree DIR`` (e.g. a checkout of the previous version) runs
every pass also with that tree's code (same interpreter, same Kafka, Redis and records), the two
interleaved so load changes on the shared machine hit both alike. In the same run, as baselines:

* store-only: the same window rows, already decoded, written straight to Redis in the same batch
  sizes (the ceiling Redis and the Lua append allow);
* stages: CPU us per event of each step of the data path without I/O -- decode (Avro), interactions
  (``interactions_of``, or its batch form), encode (window keys + packed rows, client side) -- and
  the Redis server's own CPU per event (``INFO cpu`` around each ingest pass).

``--scale-out`` adds: 2 ingest processes, each pinned to its own core and assigned one partition
of a 2-partition topic (what a consumer group gives two members), aggregate events/s.

Units: an *interaction* is one interaction event (one transaction record); with the fraud plan
each makes 2 window rows (customer hop and terminal hop), reported as ``window_rows_per_s``. The
target (>= 100,000 events/s on one core) is checked against events.

    python3 bench/bench_ingest.py [--events 100000] [--batch-sizes 1000,5000,10000] [--runs 3]
                                  [--priority default|nice|realtime] [--baseline-tree DIR] [--scale-out]

``--priority`` (root) raises the bench workers and the Redis and Kafka it starts above the other
load of a shared machine: ``nice`` = nice -20 for all three; ``realtime`` = SCHED_FIFO for the
workers and Redis (as in bench/bench_window_read.py --realtime), nice -20 for every thread of the
Kafka JVM (a real-time JVM could starve its own GC threads).

Prints JSON and writes bench/results/ingest[_<priority>].json and .png.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 100_000  # interaction events/s on one core (issue 20)
TABLE = "transactions"


def boost(pid: int, mode: str, threads: bool = False) -> None:
    """Raise one process (and, with ``threads``, each of its threads) above the other load."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")] if threads else [pid]
    for tid in tids:
        if mode == "realtime" and not threads:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(10))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, -20)


def produce_all(bootstrap: str, topic: str, values: list[bytes], partitions: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.synthetic import produce_values

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for t, n in ((topic, partitions), (topic + "-dlq", 1)):
        admin.create_topics([NewTopic(t, n, 1)])[t].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "enable.idempotence": True})
    produce_values(producer, topic, values, keys=[str(i % 997).encode() for i in range(len(values))])


def server_cpu_s(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# ----- worker side: runs with the code of one tree ------------------------------------------------

# Where the tree on sys.path keeps a contract function: a baseline tree may predate the split of
# schemas.plan / schemas.tensors into plan_loading / interactions / values.
_CONTRACT_MODULES = ("schemas.interactions", "schemas.plan_loading", "schemas.tensors", "schemas.plan")


def contract(name: str):
    """The contract function ``name`` of the tree on sys.path; ``None`` when that tree lacks it.
    Modules are looked up as files of that tree: the editable install would otherwise find a
    module the baseline tree lacks in the project's own checkout."""
    import schemas

    tree = Path(schemas.__file__).resolve().parents[1]
    for module in _CONTRACT_MODULES:
        if (tree / (module.replace(".", "/") + ".py")).exists():
            found = getattr(importlib.import_module(module), name, None)
            if found is not None:
                return found
    return None


def batch_api() -> bool:
    """Whether the tree on sys.path has the batch path (columns through the contract)."""
    return contract("interactions_of_columns") is not None


def run_pipeline(plan, bootstrap: str, redis_url: str, registry: Path, topic: str, n: int, batch_size: int,
                 partition: int | None = None, flush: bool = True) -> dict:
    """One timed pass of the ingest loop over the topic (or one partition) with a fresh group."""
    import redis
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from rti_store import RedisWindowStore
    from streams.ingest import IngestService, IngestSettings, open_codec

    client = redis.Redis.from_url(redis_url)
    if flush:
        client.flushdb()
    store = RedisWindowStore(plan, client)
    codec, errors = open_codec(registry, 1 << 20)
    settings = IngestSettings(topics={topic: TABLE}, dlq_topic=topic + "-dlq",
                              group_id=f"bench-{uuid.uuid4().hex[:8]}", batch_size=batch_size, batch_timeout_s=0.1)
    svc = IngestService(plan, settings, {"bootstrap.servers": bootstrap}, store, codec, errors,
                        consumer_extra={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    loop = svc.loop
    if partition is None:
        loop.subscribe(settings.topics)
    else:  # what a group gives one of two members of a 2-partition topic, without the join
        svc.consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        loop._assigned = {(topic, partition)}
    t_first = cpu_first = wall_first = srv_first = None
    consumed = 0
    deadline = time.monotonic() + 600
    while consumed < n and time.monotonic() < deadline:
        msgs = svc.consumer.consume(batch_size, 0.1)
        if msgs:
            if t_first is None:  # exclude the group join: time the data path
                srv_first = server_cpu_s(client)
                t_first, cpu_first, wall_first = time.perf_counter(), time.process_time(), time.time()
            consumed += len(msgs)
            loop.submit(msgs)  # as IngestLoop.run does: decode k+1 while Redis applies k
    loop.drain()  # the last ack and commit are part of the timed path
    wall = time.perf_counter() - t_first
    cpu = time.process_time() - cpu_first
    srv = server_cpu_s(client) - srv_first
    stats = loop.stats
    svc.close()
    assert stats.records == n and stats.dead_letters == 0, stats
    return {"seconds": wall, "events": stats.records, "window_rows": stats.interactions,
            "events_per_s": stats.records / wall, "window_rows_per_s": stats.interactions / wall,
            "cpu_us_per_event": cpu / stats.records * 1e6, "cpu_utilisation": cpu / wall,
            "redis_server_us_per_event": srv / stats.records * 1e6,
            "start_unix": wall_first, "end_unix": wall_first + wall, "batches": stats.batches,
            **_histogram_quantiles(svc.metrics)}


def _histogram_quantiles(metrics) -> dict:
    # batch latency distribution from the service's own histogram (bucket upper bounds)
    fam = next(f for f in metrics.registry.collect() if f.name == "relstream_ingest_batch_seconds")
    buckets = [(float(s.labels["le"]), s.value) for s in fam.samples if s.name.endswith("_bucket")]
    total = buckets[-1][1]
    return {f"batch_seconds_p{int(q * 100)}_le": next(le for le, c in buckets if c >= q * total) for q in (0.5, 0.99)}


def run_store_only(plan, redis_url: str, values: list[bytes], registry: Path, batch_events: int) -> dict:
    """The same window rows, decoded beforehand, straight into Redis in the same batches."""
    import redis

    from rti_store import RedisWindowStore

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = RedisWindowStore(plan, client)
    batches = [prepared for _, prepared in _stage_batches(plan, registry, values, batch_events)]
    srv0 = server_cpu_s(client)
    t0 = time.perf_counter()
    for write, args in batches:
        write(store, *args)
    wall = time.perf_counter() - t0
    srv = server_cpu_s(client) - srv0
    return {"seconds": wall, "events_per_s": len(values) / wall, "redis_server_us_per_event": srv / len(values) * 1e6}


def _stage_batches(plan, registry: Path, values: list[bytes], batch_events: int):
    """Per batch: (decoded rows, (store write, its arguments)) with this tree's data path."""
    from streams.ingest import open_codec

    codec, _ = open_codec(registry, 1 << 20)
    out = []
    for i in range(0, len(values), batch_events):
        chunk = values[i:i + batch_events]
        if batch_api():
            from streams.columnar import ColumnarDecoder

            interactions_of_columns = contract("interactions_of_columns")
            cols = plan.interaction_columns[TABLE]
            _rows, columns = ColumnarDecoder(codec.registry, 1 << 20).decode(chunk, cols)
            batch = interactions_of_columns(plan, TABLE, columns, len(chunk))
            out.append((batch, (lambda st, hops: st.append_rows(hops), (batch.hops,))))
        else:
            interactions_of = contract("interactions_of")

            items = [a for v in chunk for a in interactions_of(plan, TABLE, codec.decode(v)[1])]
            out.append((items, (lambda st, its: st.append(its), (items,))))
    return out


def run_stages(plan, registry: Path, values: list[bytes], batch_events: int) -> dict:
    """CPU us per event of decode, interactions and client-side encode (no I/O), this tree's path."""
    import redis

    from rti_store import RedisWindowStore
    from streams.ingest import open_codec

    codec, _ = open_codec(registry, 1 << 20)
    store = RedisWindowStore(plan, redis.Redis())  # never connects: encoding only
    chunks = [values[i:i + batch_events] for i in range(0, len(values), batch_events)]
    clock = time.process_time
    if batch_api():
        from streams.columnar import ColumnarDecoder

        interactions_of_columns = contract("interactions_of_columns")
        columnar = ColumnarDecoder(codec.registry, 1 << 20)
        cols = plan.interaction_columns[TABLE]
        t0 = clock()
        decoded = [columnar.decode(c, cols)[1] for c in chunks]
        t1 = clock()
        batches = [interactions_of_columns(plan, TABLE, d, len(c)) for d, c in zip(decoded, chunks)]
        t2 = clock()
        for b in batches:  # everything append_rows does before the round trip
            store.encode_calls(b.hops)
        t3 = clock()
    else:
        interactions_of = contract("interactions_of")

        t0 = clock()
        decoded = [[codec.decode(v)[1] for v in c] for c in chunks]
        t1 = clock()
        batches = [[a for r in d for a in interactions_of(plan, TABLE, r)] for d in decoded]
        t2 = clock()
        for items in batches:  # what append does before the round trip
            for hop_key, entity, interaction in items:
                store.redis_key(hop_key, entity)
                store.codecs[hop_key].encode(interaction)
        t3 = clock()
    n = len(values) / 1e6
    return {"decode_us_per_event": (t1 - t0) / n, "interactions_us_per_event": (t2 - t1) / n,
            "encode_us_per_event": (t3 - t2) / n}


def worker(args) -> None:
    """One measurement with the code of the tree on sys.path; JSON on stdout."""
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.priority != "default":
        boost(0, args.priority)  # before any librdkafka thread exists: they inherit it
    builtin_plan = contract("builtin_plan")

    plan = builtin_plan("fraud")
    job = json.loads(args.worker)
    values = None
    if job["kind"] in ("store", "stages"):
        values = [bytes.fromhex(v) for v in json.loads(Path(job["values"]).read_text())]
    if job["kind"] == "pipeline":
        out = run_pipeline(plan, job["bootstrap"], job["redis_url"], Path(job["registry"]), job["topic"], job["n"],
                           job["batch_size"], partition=job.get("partition"), flush=job.get("flush", True))
    elif job["kind"] == "store":
        out = run_store_only(plan, job["redis_url"], values, Path(job["registry"]), job["batch_size"])
    else:
        out = run_stages(plan, Path(job["registry"]), values, job["batch_size"])
    out["batch_path"] = batch_api()
    print(json.dumps(out), flush=True)


# ----- orchestration ----------------------------------------------------------------------------

class Workers:
    """Starts measurement workers with the code of one tree or another."""

    def __init__(self, args, common: dict):
        self.args = args
        self.common = common

    def start(self, tree: Path, job: dict, cpus: str | None = None) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")  # leave the tree untouched
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({**self.common, **job}),
               "--priority", self.args.priority, "--cpus", self.args.cpus if cpus is None else cpus]
        return subprocess.Popen(cmd, env=env, cwd=str(tree), stdout=subprocess.PIPE, text=True)

    @staticmethod
    def result(proc: subprocess.Popen) -> dict:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"bench worker failed (exit {proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])

    def run(self, tree: Path, job: dict) -> dict:
        return self.result(self.start(tree, job))


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["config"]["batch_sizes"]
    trees = list(result["trees"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / (2 * len(trees))
    for k, name in enumerate(trees):
        t = result["trees"][name]
        for j, (kind, label) in enumerate((("store_only", "store only"), ("pipeline", "full ingest"))):
            xs = [i - 0.4 + width * (2 * k + j + 0.5) for i in range(len(sizes))]
            ys = [t[kind][str(b)]["median_events_per_s"] for b in sizes]
            bars = ax.bar(xs, ys, width=width, label=f"{name}: {label}", color=f"C{2 * k + j}")
            for x, y in zip(xs, ys):
                ax.text(x, y, f"{y / 1000:.0f}k", ha="center", va="bottom", fontsize=7)
    if "scale_out" in result:
        so = result["scale_out"]
        ax.axhline(so["median_events_per_s"], color="purple", linestyle=":",
                   label=f"2 processes, 2 partitions: {so['median_events_per_s']:,.0f}/s")
    ax.axhline(TARGET, color="red", linestyle="--", label=f"target {TARGET:,} events/s")
    ax.set_xticks(list(range(len(sizes))), [f"{b:,}" for b in sizes])
    ax.set_xlabel("records per batch (one Redis round trip)")
    ax.set_ylabel("interaction events / s (median; x2 window rows)")
    ax.legend(fontsize=7)
    stages = ("decode", "interactions", "encode", "redis_server")
    bottom = [0.0] * len(trees)
    for k, stage in enumerate(stages):
        ys = [result["trees"][n]["stages"][f"{stage}_us_per_event"] for n in trees]
        ax2.bar(trees, ys, bottom=bottom, label=stage, color=f"C{k + 4}")
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax2.set_ylabel("CPU µs per event (median)")
    ax2.set_title("where the CPU goes (no I/O; Redis server in the ingest passes)", fontsize=9)
    ax2.legend(fontsize=8)
    c = result["config"]
    fig.suptitle(f"relstream ingest, one process pinned to CPU {c['cpus']}, {c['events']:,} events, "
                 f"{c['priority']} priority, load {c['loadavg_start'][0]:.1f} on {c['cpus_online']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000, help="transactions to pre-produce")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1000,5000,10000")
    ap.add_argument("--runs", type=int, default=3, help="repetitions per batch size (median reported)")
    ap.add_argument("--customers", type=int, default=5_000)
    ap.add_argument("--terminals", type=int, default=10_000)
    ap.add_argument("--cpus", default="0", help="CPU list the ingest workers are pinned to ('' = no pinning)")
    ap.add_argument("--priority", choices=["default", "nice", "realtime"], default="default",
                    help="scheduling of the workers and the Kafka/Redis (root; see module docstring)")
    ap.add_argument("--baseline-tree", type=Path, help="also measure this checkout's code (before/after)")
    ap.add_argument("--scale-out", action="store_true", help="also: 2 processes on a 2-partition topic")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", help="output file stem (default ingest[_<priority>])")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    sys.path.insert(0, str(ROOT))
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    from relstream.stack import LocalStack
    from schemas.registry import AvroCodec, FileSchemaRegistry, load_builtin_schemas
    from streams.synthetic import TRANSACTIONS_SUBJECT, synthetic_transactions

    trees = {"after": ROOT}
    if args.baseline_tree:
        trees = {"before": args.baseline_tree.resolve(), "after": ROOT}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    stack = LocalStack(tmp / "stack", components=("kafka", "redis"), stop_with_owner=True)
    loadavg_start = os.getloadavg()
    stack.up()
    if args.priority != "default":
        pids = stack.pids()
        boost(pids["redis"], args.priority)
        boost(pids["kafka"], args.priority, threads=True)
    try:
        registry = tmp / "registry"
        reg = FileSchemaRegistry(registry)
        load_builtin_schemas(reg)
        codec = AvroCodec(reg)
        events = synthetic_transactions(args.events, seed=1, n_customers=args.customers,
                                        n_terminals=args.terminals, span_s=5 * 86_400)
        values = [codec.encode(TRANSACTIONS_SUBJECT, e) for e in events]
        values_file = tmp / "values.json"
        values_file.write_text(json.dumps([v.hex() for v in values]))
        topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        produce_all(stack.kafka_bootstrap, topic, values, args.partitions)
        produce_s = time.perf_counter() - t0
        workers = Workers(args, {"bootstrap": stack.kafka_bootstrap, "redis_url": stack.redis_url,
                                 "registry": str(registry), "values": str(values_file), "n": args.events})
        result = {"config": {"events": args.events, "window_rows": 2 * args.events, "loadavg_start": loadavg_start,
                             "partitions": args.partitions, "batch_sizes": sizes, "runs": args.runs,
                             "cpus": args.cpus or "all", "cpus_online": os.cpu_count(), "priority": args.priority,
                             "customers": args.customers, "terminals": args.terminals,
                             "trees": {k: str(v) for k, v in trees.items()},
                             "value_bytes_mean": sum(map(len, values)) / len(values),
                             "produce_seconds": round(produce_s, 2)},
                  "trees": {name: {"stages": {}, "store_only": {}, "pipeline": {}} for name in trees}}
        stage_runs = {name: [] for name in trees}
        for b in sizes:
            runs = {name: {"store": [], "pipe": []} for name in trees}
            for _ in range(args.runs):  # interleaved: before, after, before, after, ...
                for name, tree in trees.items():
                    runs[name]["store"].append(workers.run(tree, {"kind": "store", "batch_size": b}))
                    runs[name]["pipe"].append(workers.run(tree, {"kind": "pipeline", "topic": topic, "batch_size": b}))
                    if b == max(sizes):
                        stage_runs[name].append(workers.run(tree, {"kind": "stages", "batch_size": b}))
            for name in trees:
                store_runs, pipe_runs = runs[name]["store"], runs[name]["pipe"]
                s_med, p_med = median_of(store_runs, "events_per_s"), median_of(pipe_runs, "events_per_s")
                result["trees"][name]["store_only"][str(b)] = {
                    "median_events_per_s": s_med, "runs": [r["events_per_s"] for r in store_runs],
                    "median_redis_server_us_per_event": median_of(store_runs, "redis_server_us_per_event")}
                result["trees"][name]["pipeline"][str(b)] = {
                    "median_events_per_s": p_med, "median_window_rows_per_s": median_of(pipe_runs, "window_rows_per_s"),
                    "ratio_vs_store_only": p_med / s_med,
                    **{f"median_{k}": median_of(pipe_runs, k) for k in (
                        "cpu_us_per_event", "cpu_utilisation", "redis_server_us_per_event",
                        "batch_seconds_p50_le", "batch_seconds_p99_le")},
                    "runs": pipe_runs}
                print(f"[{name}] batch {b}: ingest {p_med:,.0f} events/s, store only {s_med:,.0f} events/s, "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        for name in trees:
            stages = {k: statistics.median(r[k] for r in stage_runs[name]) for k in stage_runs[name][0] if k != "batch_path"}
            pipe = result["trees"][name]["pipeline"][str(max(sizes))]
            stages["redis_server_us_per_event"] = pipe["median_redis_server_us_per_event"]
            stages["ingest_process_us_per_event"] = pipe["median_cpu_us_per_event"]
            result["trees"][name]["stages"] = stages
            best = max(sizes, key=lambda b: result["trees"][name]["pipeline"][str(b)]["median_events_per_s"])
            pbest = result["trees"][name]["pipeline"][str(best)]
            result["trees"][name]["best"] = {
                "batch_size": best, **{k: v for k, v in pbest.items() if k != "runs"},
                "target_events_per_s": TARGET, "meets_target": pbest["median_events_per_s"] >= TARGET,
                "cpu_bound_events_per_s": 1e6 / pbest["median_cpu_us_per_event"]}
        if "before" in trees:
            before, after = (result["trees"][n]["best"]["median_events_per_s"] for n in ("before", "after"))
            result["speedup_after_over_before"] = after / before
        if args.scale_out:
            result["scale_out"] = scale_out(args, stack, codec, values, workers, max(sizes))
        result["env"] = {"loadavg_end": os.getloadavg()}
    finally:
        stack.down()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("ingest" if args.priority == "default" else f"ingest_{args.priority}")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / f"{stem}.png")
    brief = {k: v for k, v in result.items() if k != "trees"}
    brief["trees"] = {n: {"stages": t["stages"], "best": t["best"],
                          "pipeline": {b: r["median_events_per_s"] for b, r in t["pipeline"].items()},
                          "store_only": {b: r["median_events_per_s"] for b, r in t["store_only"].items()}}
                      for n, t in result["trees"].items()}
    print(json.dumps(brief, indent=1))
    return 0


def scale_out(args, stack, codec, values: list[bytes], workers: Workers, batch_size: int) -> dict:
    """2 ingest processes (CPUs 0 and 1), one partition each of a 2-partition topic, this tree."""
    topic = f"bench-scale-{uuid.uuid4().hex[:8]}"
    produce_all(stack.kafka_bootstrap, topic, values, 2)
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "bench-probe"})
    counts = [probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)]
    probe.close()
    runs = []
    for _ in range(args.runs):
        import redis
        redis.Redis.from_url(stack.redis_url).flushdb()
        procs = [workers.start(ROOT, {"kind": "pipeline", "topic": topic, "batch_size": batch_size, "partition": p,
                                      "n": counts[p], "flush": False}, cpus=str(p)) for p in (0, 1)]
        parts = [Workers.result(p) for p in procs]
        wall = max(r["end_unix"] for r in parts) - min(r["start_unix"] for r in parts)
        runs.append({"events_per_s": sum(counts) / wall, "seconds": wall, "per_process": parts})
        print(f"[scale-out] 2 processes: {runs[-1]['events_per_s']:,.0f} events/s", file=sys.stderr, flush=True)
    return {"processes": 2, "partitions": 2, "events": sum(counts), "batch_size": batch_size,
            "median_events_per_s": median_of(runs, "events_per_s"), "runs": runs}


if __name__ == "__main__":
    sys.exit(main())
