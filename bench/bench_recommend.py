"""Load benchmark of POST /v1/recommend (ranking plan ``recsys``), the scorer's protocol
(``bench/bench_serve.py``; this reuses its open-loop generator and CPU accounting (``serve_load.py``),
server handling (``serve_env.py``) and plot (``serve_report.py``)):

* open-loop traffic at a constant arrival rate, a sweep of offered QPS (default 50..300);
* 128 pre-generated payloads, each a household with a window of N in {4, 16, 50, 100} purchase
  lines pre-loaded in Redis (earlier baskets + an open basket), 100 explicit candidates per
  request, and in every other payload the open basket's newest line as a session event not yet
  in Redis (merged by the server);
* per step a warm-up, then a measurement window; p50/p90/p99 at the client from the scheduled send
  time, errors, and CPU ms per request of each process (scorer, Redis, Triton, load generator);
* everything co-located: Redis, Triton (CPU, Python backend), `relstream serve --plan recsys`
  (subprocess) and this generator.

Model: ``--model untrained`` (default) exports ``offline.export.export_untrained``
(the ranker architecture, random weights); ``--model PATH`` copies a model repository's
``relstream_ranker`` (e.g. a trained ``relstream offline recsys-distill`` export).

    python3 bench/bench_recommend.py                       # 5 s warm-up + 15 s per step, untrained ranker
    python3 bench/bench_recommend.py --model runs/cj_ranker/repo --nice -10   # a trained export, raised priority
    python3 bench/bench_recommend.py --qps 50,100,200,300 --warmup 30 --duration 60

Prints JSON and writes bench/results/recommend.json + recommend.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_env import autogroup_enabled, service_env, set_autogroup_nice, stop, wait_ready  # noqa: E402
from bench.serve_load import http_sweep, scrape  # noqa: E402
from bench.serve_report import plot  # noqa: E402
from schemas.plan_loading import builtin_plan  # noqa: E402

TARGET = {"qps": 200, "p99_ms": 50.0, "errors": 0}
LENGTHS = (4, 16, 50, 100)
N_CANDIDATES = 100
N_PRODUCTS = 2000
T0 = 1_700_000_000 * 10**9
MIN = 60 * 10**9
DAY = 1440 * MIN
MODEL = "relstream_ranker"


def model_universe(version_dir: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """``(households, products, anchor)`` the served version knows: households with an embedding,
    the catalog's products, and an anchor one day after the newest embedding snapshot (so the
    embeddings are admissible, as in production right after a weekly refresh)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from scorer.recommend import load_catalog
    table = pq.read_table(Path(version_dir) / "embeddings.parquet", columns=["entity_type", "entity_id", "snapshot_time"])
    households = np.unique(table.filter(pc.equal(table["entity_type"], "households"))["entity_id"].to_numpy())
    anchor = int(table["snapshot_time"].to_numpy().max()) + DAY
    return households, load_catalog(Path(version_dir) / "catalog.parquet"), anchor


def make_payloads(n: int = 128, seed: int = 0, households: np.ndarray | None = None,
                  products: np.ndarray | None = None, t0: int = T0) -> tuple[list[dict], list[dict]]:
    """``(bodies, history)``: request bodies and the purchase lines to pre-load into Redis.
    Households and products default to 1..n and 1..N_PRODUCTS (the untrained export's)."""
    rng = np.random.default_rng(seed)
    households = np.arange(1, n + 1) if households is None else rng.choice(households, n, replace=len(households) < n)
    products = np.arange(1, N_PRODUCTS + 1) if products is None else np.asarray(products)
    T0 = t0  # noqa: N806 - the anchor of every payload
    bodies, history = [], []
    line_id = 1
    for i in range(n):
        household = int(households[i])
        length = LENGTHS[i % len(LENGTHS)]
        open_lines = min(3, length)
        # earlier baskets (8 lines each, days apart), then the open basket (minutes old)
        times = [T0 - (1 + b) * 2 * DAY + j for b in range((length - open_lines + 7) // 8) for j in range(8)]
        times = sorted(times)[-(length - open_lines):] if length > open_lines else []
        times += [T0 - 10 * MIN + j for j in range(open_lines)]
        baskets = [int(t // DAY) for t in times[:len(times) - open_lines]] + [10**6 + i] * open_lines
        lines = [{"transaction_id": line_id + j, "transaction_timestamp": int(t), "household_id": household,
                  "product_id": int(rng.choice(products)), "basket_id": b, "quantity": int(rng.integers(1, 4)),
                  "sales_value": float(np.float32(round(float(rng.uniform(0.5, 10)), 2)))}
                 for j, (t, b) in enumerate(zip(times, baskets))]
        line_id += len(lines)
        body: dict = {"household_id": household, "anchor_time": T0, "k": 10,
                      "candidates": [int(p) for p in rng.choice(products, N_CANDIDATES, replace=False)]}
        if i % 2:  # the newest line arrives with the request, not through ingest
            body["session_events"] = [lines[-1]]
            lines = lines[:-1]
        history.extend(lines)
        bodies.append(body)
    return bodies, history


def start_stack(run_dir: Path):
    """Redis + Triton only: this path needs no Kafka (an idle broker would only add noise)."""
    from relstream.stack import LocalStack
    st = LocalStack(run_dir, run_dir / "models", components=("redis", "triton"), stop_with_owner=True)
    st.up()
    return st


def load_model(plan, stack, kind: str, instances: int) -> dict:
    import tritonclient.http as httpclient
    info: dict = {"name": MODEL, "kind": kind, "instances": instances}
    if kind == "untrained":
        from offline.export import export_untrained
        vdir = export_untrained(plan, stack.model_repository, model_name=MODEL,
                                       households=range(1, 129), products=range(1, N_PRODUCTS + 1),
                                       snapshot_times=[T0 - 2 * DAY], instance_count=instances)
    else:
        src = Path(kind) / MODEL
        if not src.is_dir():
            raise SystemExit(f"--model: no model {MODEL!r} in repository {kind}")
        shutil.copytree(src, stack.model_repository / MODEL, dirs_exist_ok=True)
        cfg = stack.model_repository / MODEL / "config.pbtxt"
        text, n = re.subn(r"count: \d+", f"count: {instances}", cfg.read_text(), count=1)
        if not n:
            raise SystemExit(f"--triton-instances: no instance count in {cfg}")
        cfg.write_text(text)
        vdir = max((p for p in (stack.model_repository / MODEL).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    manifest = json.loads((Path(vdir) / "manifest.json").read_text())
    info.update(version=manifest.get("version"), parameters=manifest.get("parameters"), version_dir=str(vdir),
                trained=manifest.get("trained", True), catalog=str(Path(vdir) / "catalog.parquet"))
    client = httpclient.InferenceServerClient(stack.triton_http_url.split("://")[1], network_timeout=300)
    client.load_model(MODEL)
    assert client.is_model_ready(MODEL)
    client.close()
    return info


def in_process_baseline(plan, version_dir: Path, bodies: list[dict], history: list[dict], n: int = 384) -> dict:
    """The same ranking in this process, no HTTP / Redis / Triton: window from an in-memory store,
    the one tensor builder, the bundle's forward (torch, 1 thread). What serving adds is the
    difference (ratios in the verdict)."""
    import torch

    from bench.serve_load import summary_ms
    from offline.export.bundle import load_bundle, split_scores
    from rti_store import MemoryWindowStore
    from schemas.interactions import interactions_of
    from scorer.recommend import RecommendSettings, parse_request, prepare, request_tensors

    torch.set_num_threads(1)
    bundle = load_bundle(version_dir)
    store = MemoryWindowStore(plan)
    store.append([a for r in history for a in interactions_of(plan, "transactions", r)])
    settings, catalog = RecommendSettings(), np.zeros(0, np.int64)

    def one(body):
        req = parse_request(plan, body, now_ns=time.time_ns, catalog=catalog, settings=settings)
        p = prepare(plan, req, store.read_many(list(req.keys), [req.anchor_time] * len(req.keys)), settings)
        return split_scores(bundle, [request_tensors(plan, p)])

    for body in bodies[:16]:
        one(body)
    wall, cpu0 = [], time.process_time()
    for i in range(n):
        t = time.perf_counter()
        one(bodies[i % len(bodies)])
        wall.append(time.perf_counter() - t)
    return {"service_time": summary_ms(wall), "cpu_ms_per_request": 1e3 * (time.process_time() - cpu0) / n,
            "requests": n}


def write_config(path: Path, stack, model: dict, args) -> Path:
    import yaml
    cfg = {"run_dir": str(path.parent / "run"), "redis": {"url": stack.redis_url},
           "triton": {"url": stack.triton_http_url, "model_name": MODEL},
           "serve": {"plan": "recsys", "triton_grpc_url": stack.triton_grpc_url, "batch_window_ms": args.batch_window_ms,
                     "max_batch": args.max_batch, "max_in_flight": args.max_in_flight,
                     "batch_interval_ms": args.batch_interval_ms,
                     "window_deadline_ms": args.window_deadline_ms,
                     "recommend": {"catalog": model["catalog"], "max_batch": args.max_batch}}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def verdict(steps: list[dict]) -> dict:
    ok = [s for s in steps if s["errors"] == 0 and (s["latency_from_schedule"].get("p99_ms") or 1e9)
          <= TARGET["p99_ms"] and s["achieved_qps"] >= 0.95 * s["offered_qps"]]
    best = max(ok, key=lambda s: s["offered_qps"]) if ok else None
    return {"max_qps_meeting_p99_50ms_0_errors": best["offered_qps"] if best else 0,
            "target_met": bool(best and best["offered_qps"] >= TARGET["qps"])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qps", default="50,100,150,200,250,300", help="offered QPS steps (comma separated)")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--batch-window-ms", type=float, default=1.0)
    ap.add_argument("--batch-interval-ms", type=float, default=10.0, help="serve.batch_interval_ms (batch pacing)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-in-flight", type=int, default=2)
    ap.add_argument("--window-deadline-ms", type=float, default=20.0)
    ap.add_argument("--triton-instances", type=int, default=2, help="Triton model instances (2: one per core)")
    ap.add_argument("--model", default="untrained", help="untrained (default) | PATH of a model repository "
                                                          f"holding {MODEL!r}")
    ap.add_argument("--client", default="aiohttp", choices=["raw", "aiohttp"], help="load generator HTTP client "
                    "(bench_serve's lean raw HTTP/1.1 client, or aiohttp)")
    ap.add_argument("--nice", type=int, default=0, help="run the whole benchmark (stack, scorer, load) at this "
                                                         "niceness, e.g. -10 (root): less noise from other load; "
                                                         "with sched_autogroup its sessions' autogroups too "
                                                         "(serve_env.set_autogroup_nice)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recommend")
    args = ap.parse_args(argv)

    import orjson

    from relstream.stack import free_port
    from rti_store import RedisWindowStore
    from schemas.interactions import interactions_of
    from bench.serve_env import start_serve

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.nice:
        os.nice(args.nice)  # inherited by every server started below
    plan = builtin_plan("recsys")
    tmp = Path(tempfile.mkdtemp(prefix="bench-recommend-"))
    log(f"starting the local stack in {tmp} ...")
    stack = start_stack(tmp / "stack")
    result: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version(), "load_avg_start": os.getloadavg(),
                                "sched_autogroup": autogroup_enabled(), "nice": args.nice},
                    "protocol": {"warmup_s": args.warmup, "duration_s": args.duration,
                                 "window_lengths": list(LENGTHS), "candidates_per_request": N_CANDIDATES,
                                 "session_events_in_half_the_payloads": 1, "open_loop": True},
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "target": TARGET, "http": {}}
    proc = None
    try:
        model = load_model(plan, stack, args.model, args.triton_instances)
        result["model"] = model
        if args.model == "untrained":
            bodies, history = make_payloads()
        else:  # the trained model's households, catalog products and embedding validity
            households, products, anchor = model_universe(Path(model["version_dir"]))
            bodies, history = make_payloads(households=households, products=products, t0=anchor)
            result["protocol"]["anchor_time"] = anchor
        result["protocol"]["payloads"] = len(bodies)
        store = RedisWindowStore(plan, stack.redis_url)
        store.append([a for r in history for a in interactions_of(plan, "transactions", r)])
        store.close()
        config = write_config(tmp / "relstream.yaml", stack, model, args)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server_log = tmp / "serve.log"
        proc = start_serve(config, port, 1, server_log)
        wait_ready(url, proc, server_log)
        if args.nice:
            groups = set_autogroup_nice([os.getpid(), proc.pid, *stack.pids().values()], args.nice)
            result["machine"]["autogroups_niced"] = len(groups)
        encoded = [orjson.dumps(b) for b in bodies]
        sizes = [len(b) for b in encoded]
        result["payload_bytes"] = [min(sizes), max(sizes)]
        import httpx
        probe = httpx.post(f"{url}/v1/recommend", content=encoded[1], timeout=30,
                           headers={"Authorization": f"Bearer {_token()}", "Content-Type": "application/json"})
        if probe.status_code != 200:
            raise RuntimeError(f"probe request failed: {probe.status_code} {probe.text}")
        result["example_response"] = probe.json()
        log(f"/v1/recommend: payloads {min(sizes)}-{max(sizes)} bytes, {N_CANDIDATES} candidates, model {model}")
        stack_pids = {k: v for k, v in stack.pids().items() if k in ("redis", "triton")}
        steps = http_sweep(f"{url}/v1/recommend", encoded, [float(q) for q in args.qps.split(",") if q],
                           args.warmup, args.duration, log, pids={"serve": proc.pid, **stack_pids},
                           client=args.client)
        result["http"][f"/v1/recommend ({N_CANDIDATES} candidates)"] = steps
        result["server"] = scrape(url)
        stop(proc)
        proc = None
        result["machine"]["load_avg_end"] = os.getloadavg()
        log("in-process baseline (same payloads, no HTTP/Redis/Triton) ...")
        result["baseline_in_process"] = in_process_baseline(plan, Path(model["version_dir"]), bodies, history)
    finally:
        if args.nice:
            set_autogroup_nice([os.getpid()], 0)  # this session goes back to normal
        if proc is not None:
            stop(proc)
        stack.down()
    steps = result["http"].get(f"/v1/recommend ({N_CANDIDATES} candidates)", [])
    result["verdict"] = verdict(steps)
    base = result.get("baseline_in_process")
    if base:
        result["verdict"]["served_over_in_process"] = [
            {"offered_qps": s["offered_qps"],
             "p50_latency": (s["latency_from_schedule"].get("p50_ms") or np.nan) / base["service_time"]["p50_ms"],
             "cpu_per_request": s["cpu_ms_per_request"]["scorer_stack"] / base["cpu_ms_per_request"]}
            for s in steps]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result, indent=1))
    return result


def _token() -> str:
    return service_env()["RELSTREAM_API_TOKEN"]


if __name__ == "__main__":
    main()
