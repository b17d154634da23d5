"""Load benchmark of the online scorer, following the seed's protocol (seeds/000):

* open-loop traffic at a constant arrival rate (sends are scheduled on a fixed clock and never
  wait for replies), round-robin over 128 pre-generated payloads with N in {4, 8, 16, 32} recent
  interactions per window (pre-loaded into Redis for ``/v1/score``, inlined for ``/v1/infer``);
* per load step a warm-up, then a measurement window; a sweep of offered QPS up to saturation;
* latency at the client, request out -> response in (auth, JSON, Redis, tensors, Triton);
* the Kafka path: produce-to-score-consumed latency at a given rate (read_committed consumer),
  after its own warm-up (``--kafka-warmup``, 30 s), split into produced -> scorer, in the scorer,
  and record built -> consumed (transaction commit + fetch);
* optional: the deep-at-request-time baseline (``offline/quality/deep.py``) at the same load.

Everything is co-located on this machine: Kafka, Redis, Triton (CPU, Python backend), the
scorer (`relstream serve` / `relstream score` as subprocesses) and this load generator.

    python3 bench/bench_serve.py                          # short defaults: 5 s warm-up + 15 s per step
    python3 bench/bench_serve.py --warmup 30 --duration 180 --qps 200,400,600,800,1000,1100,1200
    python3 bench/bench_serve.py --skip-kafka --workers 2 --batch-window-ms 2
    python3 bench/bench_serve.py --skip-http --kafka-rate 1000 --repeat 2 --cpu-json bench/results/serving_cpu.json

Prints JSON and writes bench/results/serve.json + serve.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.payloads import LENGTHS, infer_bodies, make_payloads  # noqa: E402
from bench.serve_deep import deep_baseline_latency  # noqa: E402
from bench.serve_env import (autogroup_enabled, export_and_load, make_topics, set_autogroup_nice,  # noqa: E402
                             start_serve, start_stack, stop, wait_ready, write_config)
from bench.serve_kafka import kafka_latency  # noqa: E402
from bench.serve_load import http_sweep, scrape  # noqa: E402
from bench.serve_report import (TARGET_HTTP, TARGET_KAFKA, merge_cpu_summary, plot, plot_cpu_summary,  # noqa: E402
                                verdict)
from schemas.plan_loading import builtin_plan  # noqa: E402


def _floats(csv: str) -> list[float]:
    return [float(x) for x in str(csv).split(",") if x.strip()]



def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qps", default="100,200,400,600,800,1000,1200,1500", help="offered QPS steps (comma separated)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up per step (seed: 30)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds measured per step (seed: 180)")
    ap.add_argument("--endpoints", default="score", help="comma list of score,infer")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--batch-window-ms", type=float, default=1.0)
    ap.add_argument("--batch-interval-ms", type=float, default=None,
                    help="serve.batch_interval_ms (min time between batches); default: the service's")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-in-flight", type=int, default=2)
    ap.add_argument("--window-deadline-ms", type=float, default=20.0)
    ap.add_argument("--triton-instances", type=int, default=1)
    ap.add_argument("--model", default="export",
                    help="export (untrained real export, default) | fixture (tests' numpy model: serving "
                         "overhead only) | PATH of a model repository with a 'relstream' model")
    ap.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                    help="load generator: raw = pre-encoded HTTP/1.1 on keep-alive connections (lean), "
                         "aiohttp = the first version's client (~5x its CPU per request)")
    ap.add_argument("--kafka-rate", default="1000",
                    help="events/s on the Kafka path; a comma list sweeps them (one scorer run each)")
    ap.add_argument("--kafka-max-batch", type=int, default=256)
    ap.add_argument("--kafka-poll-ms", type=float, default=20.0)
    ap.add_argument("--kafka-commit-ms", type=float, default=0.0,
                    help="score.commit_interval_ms: 0 = a transaction per batch (pipelined); >0 = per interval")
    ap.add_argument("--kafka-score-settings", default="",
                    help='JSON merged into the `score` config section, e.g. \'{"consumer": {"fetch.wait.max.ms": 10}}\'')
    ap.add_argument("--kafka-warmup", type=float, default=30.0,
                    help="seconds at the rate before measuring (seed: 30): the broker is started by the benchmark "
                         "and its JVM compiles the transaction paths in the first seconds")
    ap.add_argument("--kafka-duration", type=float, default=30.0, help="seconds measured on the Kafka path")
    ap.add_argument("--kafka-batch-interval-ms", type=float, default=20.0, help="score.batch_interval_ms")
    ap.add_argument("--kafka-producer-linger-ms", type=float, default=5.0,
                    help="linger.ms of the load generator's producer of facts (librdkafka's default: 5)")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-kafka", action="store_true")
    ap.add_argument("--deep-dir", type=Path, help="run dir of --deep-project with deep_model.pt "
                                                  "(deep-at-request-time baseline)")
    ap.add_argument("--deep-project", type=Path, help="the project spec of --deep-dir")
    ap.add_argument("--deep-qps", default="10", help="load(s) of the baseline comparison, comma separated "
                                                     "(also added to the HTTP sweep)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the whole benchmark (stack, scorer, load) at this niceness, e.g. -10 (root): less "
                         "noise from other load. With sched_autogroup on, every session is one scheduling group "
                         "and a process's nice counts only inside it, so the autogroups of the benchmark's "
                         "processes get this nice too (restored for this session at the end)")
    ap.add_argument("--repeat", type=int, default=1, help="run each HTTP step and Kafka rate this many times")
    ap.add_argument("--cpu-json", type=Path, metavar="JSON",
                    help="also merge the target points and CPU per event into this summary "
                         "(bench/results/serving_cpu.json) under --label")
    ap.add_argument("--label", default="after", help="whose code this run measures, e.g. before / after")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the PNG of an earlier result")
    args = ap.parse_args(argv)
    if args.replot:
        result = json.loads(args.replot.read_text())
        plot(result, args.replot.with_suffix(".png"))
        return result

    from relstream.stack import free_port
    from rti_store import RedisWindowStore
    from schemas.registry import AvroCodec, FileSchemaRegistry, load_builtin_schemas

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.nice:
        os.nice(args.nice)  # inherited by every server started below
    plan = builtin_plan("fraud")
    payloads = make_payloads(128)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    log(f"starting the local stack in {tmp} ...")
    stack = start_stack(tmp / "stack")
    result: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version(), "load_avg_start": os.getloadavg(),
                                "sched_autogroup": autogroup_enabled(), "nice": args.nice},
                    "protocol": {"warmup_s": args.warmup, "duration_s": args.duration, "payloads": len(payloads.rows),
                                 "lengths": list(LENGTHS), "open_loop": True,
                                 "kafka_warmup_s": args.kafka_warmup, "kafka_duration_s": args.kafka_duration},
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "targets": {"http": TARGET_HTTP, "kafka": TARGET_KAFKA}, "http": {}, "server": {}}
    procs = []
    try:
        model = export_and_load(plan, stack, "relstream", args.triton_instances, args.model)
        result["model"] = model
        store = RedisWindowStore(plan, stack.redis_url)
        store.append(payloads.append_items(plan))
        store.close()
        registry = tmp / "schema-registry"
        load_builtin_schemas(FileSchemaRegistry(registry))
        codec = AvroCodec(FileSchemaRegistry(registry))
        topics = make_topics(stack)
        config = write_config(tmp / "relstream.yaml", stack, model["name"], topics, registry, args)

        if not args.skip_http:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server_log = tmp / "serve.log"
            proc = start_serve(config, port, args.workers, server_log)
            procs.append(proc)
            wait_ready(url, proc, server_log)
            if args.nice:
                groups = set_autogroup_nice([os.getpid(), proc.pid, *stack.pids().values()], args.nice)
                result["machine"]["autogroups_niced"] = len(groups)
            import orjson
            qps_list = [float(q) for q in args.qps.split(",") if q]
            if args.deep_dir:
                qps_list = sorted(set(qps_list) | set(_floats(args.deep_qps)))
            qps_list = [q for q in qps_list for _ in range(args.repeat)]  # each step back to back
            for endpoint in [e.strip() for e in args.endpoints.split(",") if e.strip()]:
                if endpoint == "score":
                    bodies = [orjson.dumps(r) for r in payloads.rows]
                elif endpoint == "infer":
                    bodies = [orjson.dumps(b) for b in infer_bodies(plan, payloads)]
                else:
                    raise SystemExit(f"--endpoints: unknown endpoint {endpoint!r}")
                sizes = [len(b) for b in bodies]
                log(f"HTTP /v1/{endpoint}: payloads {min(sizes)}-{max(sizes)} bytes, workers {args.workers}")
                stack_pids = {k: v for k, v in stack.pids().items() if k in ("redis", "triton")}
                result["http"][f"/v1/{endpoint}"] = http_sweep(f"{url}/v1/{endpoint}", bodies, qps_list,
                                                               args.warmup, args.duration, log,
                                                               pids={"serve": proc.pid, **stack_pids},
                                                               client=args.client)
                result.setdefault("payload_bytes", {})[endpoint] = [min(sizes), max(sizes)]
            if args.workers == 1:
                result["server"] = scrape(url)
            stop(proc)

        if not args.skip_kafka:
            rates = [float(r) for r in str(args.kafka_rate).split(",")]
            for rate in [r for r in rates for _ in range(args.repeat)]:
                # one scorer process per run, same topics (each run reads from the end)
                log(f"Kafka path at {rate:.0f} events/s ...")
                res = kafka_latency(stack, config, topics, codec, payloads, rate, args.kafka_warmup,
                                    args.kafka_duration, tmp / "score.log", log,
                                    producer_linger_ms=args.kafka_producer_linger_ms)
                result.setdefault("kafka_sweep", []).append(res)
            # the target's rate (or the first) is the headline
            result["kafka"] = next((r for r in result["kafka_sweep"] if r["rate"] == TARGET_KAFKA["rate"]),
                                   result["kafka_sweep"][0])

        if args.deep_dir:
            steps = result["http"].get("/v1/score") or []
            log(f"deep-at-request-time baseline at {args.deep_qps} QPS ...")
            if not args.deep_project:
                raise SystemExit("--deep-dir needs --deep-project (the project spec of the run)")
            sweep = deep_baseline_latency(args.deep_dir, args.deep_project, _floats(args.deep_qps), args.duration,
                                          log)
            for deep in sweep:
                distilled = next((s for s in steps if s["offered_qps"] == deep["qps"]), None)
                if distilled and distilled["latency_from_schedule"].get("p99_ms"):
                    deep["distilled_p99_ms"] = distilled["latency_from_schedule"]["p99_ms"]
                    deep["p99_ratio_deep_over_distilled"] = deep["latency_from_schedule"]["p99_ms"] / deep["distilled_p99_ms"]
            result["deep_sweep"] = sweep
            result["deep_baseline"] = sweep[0]
    finally:
        if args.nice:
            set_autogroup_nice([os.getpid()], 0)  # this session goes back to normal
        for p in procs:
            stop(p)
        stack.down()
    result["machine"]["load_avg_end"] = os.getloadavg()
    result["verdict"] = verdict(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    if args.cpu_json:
        merge_cpu_summary(args.cpu_json, args.label, result)
        plot_cpu_summary(args.cpu_json)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
