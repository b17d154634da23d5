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
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.payloads import LENGTHS, Payloads, infer_bodies, make_payloads  # noqa: E402
from relstream.stack.process import Process  # noqa: E402
from schemas.plan_loading import builtin_plan  # noqa: E402

TOKEN = "bench-" + uuid.uuid4().hex
TARGET_HTTP = {"qps": 1000, "p99_ms": 50.0, "errors": 0}
TARGET_KAFKA = {"rate": 1000, "p99_ms": 100.0}


def pct(xs, q) -> float | None:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else None


def _floats(csv: str) -> list[float]:
    return [float(x) for x in str(csv).split(",") if x.strip()]


def summary_ms(xs) -> dict:
    xs = np.asarray(xs, dtype=np.float64) * 1e3
    if not len(xs):
        return {"n": 0}
    return {"n": int(len(xs)), "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99),
            "max_ms": float(xs.max()), "mean_ms": float(xs.mean())}


# ----- environment ------------------------------------------------------------------------------

def start_stack(run_dir: Path):
    from relstream.stack import LocalStack
    st = LocalStack(run_dir, run_dir / "models", stop_with_owner=True)
    st.up()
    return st


def export_and_load(plan, stack, model_name: str, instances: int, kind: str) -> dict:
    """``kind``: ``export`` = offline.export.export_untrained (the real model code, random weights),
    ``fixture`` = the scorer tests' numpy model (isolates the serving overhead from model cost),
    or a path to a model repository directory holding ``model_name`` (e.g. a trained export)."""
    import shutil

    import tritonclient.http as httpclient
    info: dict = {"name": model_name, "kind": kind, "instances": instances}
    if kind == "export":
        from offline.export import export_untrained
        vdir = export_untrained(plan, stack.model_repository, model_name=model_name, instance_count=instances)
        manifest = json.loads((Path(vdir) / "manifest.json").read_text())
        info.update(version=manifest.get("version"), parameters=manifest.get("parameters"),
                    trained=manifest.get("trained", False))
    elif kind == "fixture":
        from tests.scorer.model_repo import write_test_model
        write_test_model(plan, stack.model_repository, name=model_name)
        cfg = stack.model_repository / model_name / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace("count: 1,", f"count: {instances},"))
    else:
        src = Path(kind) / model_name
        if not src.is_dir():
            raise SystemExit(f"--model: no model {model_name!r} in repository {kind}")
        shutil.copytree(src, stack.model_repository / model_name, dirs_exist_ok=True)
    client = httpclient.InferenceServerClient(stack.triton_http_url.split("://")[1], network_timeout=300)
    client.load_model(model_name)
    assert client.is_model_ready(model_name)
    client.close()
    return info


def write_config(path: Path, stack, model_name: str, topics: tuple[str, str, str], registry: Path,
                 args) -> Path:
    import yaml
    facts, scores, dlq = topics
    cfg = {
        "run_dir": str(path.parent / "run"),
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
        "redis": {"url": stack.redis_url},
        "triton": {"url": stack.triton_http_url, "model_name": model_name},
        "topics": {"facts": facts, "scores": scores, "dlq": dlq},
        "serve": {"plan": "fraud", "triton_grpc_url": stack.triton_grpc_url, "batch_window_ms": args.batch_window_ms,
                  "batch_interval_ms": args.batch_interval_ms,
                  "max_batch": args.max_batch, "max_in_flight": args.max_in_flight,
                  "window_deadline_ms": args.window_deadline_ms},
        "score": {"plan": "fraud", "triton_grpc_url": stack.triton_grpc_url, "registry_dir": str(registry),
                  "max_batch": args.kafka_max_batch, "group_id": f"bench-{facts}",
                  "transactional_id": f"bench-{facts}", "poll_timeout_ms": args.kafka_poll_ms,
                  "batch_interval_ms": args.kafka_batch_interval_ms,
                  "commit_interval_ms": getattr(args, "kafka_commit_ms", 0.0),
                  **json.loads(getattr(args, "kafka_score_settings", None) or "{}")},
    }
    cfg["serve"] = {k: v for k, v in cfg["serve"].items() if v is not None}  # None: the service's default
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELSTREAM")}
    env["RELSTREAM_API_TOKEN"] = TOKEN
    return env


def start_serve(config: Path, port: int, workers: int, log: Path) -> Process:
    argv = [sys.executable, "-m", "relstream.cli", "--config", str(config), "serve", "--port", str(port),
            "--workers", str(workers)]
    return Process("serve", argv, log, env=_env(), cwd=ROOT).start()


def wait_ready(url: str, proc: Process, log: Path, timeout: float = 120) -> None:
    proc.wait_http(f"{url}/readyz", timeout)


def stop(proc: Process) -> None:
    proc.stop(20)


# ----- open-loop HTTP load ------------------------------------------------------------------------

def _send_log(n: int):
    """Per request of an open-loop run: scheduled, sent and done times, HTTP status; errors by kind."""
    errors: dict[str, int] = {}
    return np.empty(n), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=np.int32), errors


async def open_loop(url: str, bodies: list[bytes], qps: float, warmup: float, duration: float,
                    headers: dict, timeout_s: float = 5.0) -> dict:
    """Send at a constant rate on a fixed clock; never wait for replies before sending."""
    import aiohttp
    loop = asyncio.get_running_loop()
    n_total = int(qps * (warmup + duration))
    sched, sent, done, status, errors = _send_log(n_total)
    conn = aiohttp.TCPConnector(limit=0, force_close=False, ttl_dns_cache=None)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)

    clock = time.perf_counter  # uvloop's loop.time() has 1 ms resolution

    async def one(i: int, session) -> None:
        sent[i] = clock()
        try:
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as resp:
                await resp.read()
                status[i] = resp.status
        except asyncio.TimeoutError:
            errors["timeout"] = errors.get("timeout", 0) + 1
        except aiohttp.ClientError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        done[i] = clock()

    async with aiohttp.ClientSession(connector=conn, timeout=client_timeout) as session:
        tasks = []
        t0 = clock() + 0.05
        for i in range(n_total):
            sched[i] = t0 + i / qps
            delay = sched[i] - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(i, session)))
        await asyncio.gather(*tasks)
    return _step_result(qps, warmup, duration, t0, sched, sent, done, status, errors)


class _RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of :func:`open_loop_raw`: one request at a time, the
    response framed by its Content-Length (the scorer always sends one)."""

    def __init__(self, on_done):
        self.on_done = on_done  # (connection, request index, status or error name)
        self.transport = None
        self.buf = b""
        self.need = None
        self.current = None
        self.timer = None
        self.status = 0

    def connection_made(self, transport):
        self.transport = transport

    def send(self, i: int, request: bytes, timeout_s: float) -> None:
        self.current = i
        self.timer = asyncio.get_running_loop().call_later(timeout_s, self._timeout)
        self.transport.write(request)

    def _finish(self, outcome) -> None:
        i, self.current, self.buf, self.need = self.current, None, b"", None
        if self.timer is not None:
            self.timer.cancel()
        if i is not None:
            self.on_done(self, i, outcome)

    def _timeout(self) -> None:
        self.timer = None
        self._finish("timeout")
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].split(b"\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                           if line[:15].lower() == b"content-length:"), None)
            if length is None:
                self._finish("no_content_length")
                self.transport.close()
                return
            self.status = int(lines[0][9:12])
            self.need = end + 4 + length
        if len(self.buf) >= self.need:
            self._finish(self.status)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.current is not None:
            self._finish(type(exc).__name__ if exc else "connection_closed")


async def open_loop_raw(url: str, bodies: list[bytes], qps: float, warmup: float, duration: float,
                        headers: dict, timeout_s: float = 5.0) -> dict:
    """Same protocol as :func:`open_loop` with a lean client: pre-encoded HTTP/1.1 requests on a
    pool of keep-alive connections (a new one whenever none is idle, like aiohttp with limit=0),
    completions as protocol callbacks - ~5x less CPU per request than aiohttp, CPU that the
    co-located scorer otherwise loses to its own load generator."""
    from urllib.parse import urlsplit
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()))
    requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
    n_total = int(qps * (warmup + duration))
    sched, sent, done, status, errors = _send_log(n_total)
    idle: list[_RawConnection] = []
    outstanding = 0
    finished = loop.create_future()
    clock = time.perf_counter

    def on_done(conn, i, outcome):
        nonlocal outstanding
        done[i] = clock()
        if isinstance(outcome, int):
            status[i] = outcome
            if conn is not None and conn.transport is not None:
                idle.append(conn)
        else:
            errors[outcome] = errors.get(outcome, 0) + 1
        outstanding -= 1
        if outstanding == 0 and sending_over and not finished.done():
            finished.set_result(None)

    async def connect_and_send(i):
        try:
            _, conn = await loop.create_connection(lambda: _RawConnection(on_done), parts.hostname, parts.port)
        except OSError as exc:
            on_done(None, i, type(exc).__name__)
            return
        sent[i] = clock()
        conn.send(i, requests[i % len(requests)], timeout_s)

    sending_over = False
    t0 = clock() + 0.05
    sched[:] = t0 + np.arange(n_total) / qps
    pending_tasks = set()
    i = 0
    while i < n_total:
        now = clock()
        while i < n_total and sched[i] <= now:
            outstanding += 1
            while idle and idle[-1].transport is None:  # closed by the server while idle
                idle.pop()
            if idle:
                conn = idle.pop()
                sent[i] = clock()
                conn.send(i, requests[i % len(requests)], timeout_s)
            else:
                task = loop.create_task(connect_and_send(i))
                pending_tasks.add(task)
                task.add_done_callback(pending_tasks.discard)
            i += 1
        if i < n_total:
            await asyncio.sleep(max(0.0, sched[i] - clock()))
    sending_over = True
    if outstanding:
        await finished
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    return _step_result(qps, warmup, duration, t0, sched, sent, done, status, errors)


def _step_result(qps, warmup, duration, t0, sched, sent, done, status, errors) -> dict:
    in_window = sched >= t0 + warmup
    ok = in_window & (status == 200)
    bad_status = in_window & (status != 200) & (status != 0)
    statuses = {str(s): int(c) for s, c in zip(*np.unique(status[bad_status], return_counts=True))}
    window_errors = int((in_window & (status != 200)).sum())
    measured_end = np.nanmax(done[in_window]) if in_window.any() else t0 + warmup + duration
    return {
        "offered_qps": qps,
        "sent": int(in_window.sum()),
        "ok": int(ok.sum()),
        "errors": window_errors,
        "error_kinds": {**errors, **{f"http_{k}": v for k, v in statuses.items()}},
        "achieved_qps": float(ok.sum() / max(1e-9, measured_end - (t0 + warmup))),
        # latency from the actual send (seed definition) and from the scheduled send (includes any
        # lag of this load generator, so it is the conservative number used for the targets)
        "latency": summary_ms(done[ok] - sent[ok]),
        "latency_from_schedule": summary_ms(done[ok] - sched[ok]),
        "send_lag": summary_ms(sent[in_window] - sched[in_window]),
    }


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """user+system CPU seconds of each named process and its live descendants (load-independent:
    what a request costs, whatever else runs on the machine). This process itself
    (``load_generator``) is counted without its children: it is the parent of the servers."""
    import psutil
    out = {}
    for name, pid in pids.items():
        total = 0.0
        try:
            proc = psutil.Process(pid)
            family = [proc] if pid == os.getpid() else [proc, *proc.children(recursive=True)]
            for p in family:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        out[name] = total
    return out


def http_sweep(url: str, bodies: list[bytes], qps_list, warmup: float, duration: float, log,
               pids: dict[str, int] | None = None, client: str = "raw") -> list[dict]:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    steps = []
    pids = {**(pids or {}), "load_generator": os.getpid()}
    for qps in qps_list:
        load_before = os.getloadavg()
        before = cpu_seconds(pids)
        run = open_loop_raw if client == "raw" else open_loop
        step = asyncio.run(run(url, bodies, qps, warmup, duration, headers))
        after = cpu_seconds(pids)
        step["load_avg"] = {"before": load_before, "after": os.getloadavg()}
        n = max(1, int(qps * (warmup + duration)))
        step["cpu_ms_per_request"] = {k: 1e3 * (after[k] - before[k]) / n for k in pids}
        step["cpu_ms_per_request"]["scorer_stack"] = sum(v for k, v in step["cpu_ms_per_request"].items()
                                                          if k != "load_generator")
        lat = step["latency_from_schedule"]
        cpu = step["cpu_ms_per_request"]
        log(f"  {qps:>6.0f} QPS offered: {step['achieved_qps']:.0f} achieved, p50 {lat.get('p50_ms', float('nan')):.1f} ms,"
            f" p99 {lat.get('p99_ms', float('nan')):.1f} ms, errors {step['errors']}; CPU ms/request: "
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        steps.append(step)
        saturated = (step["errors"] > 0.01 * max(1, step["sent"])
                     or step["achieved_qps"] < 0.9 * qps
                     or (lat.get("p99_ms") or 1e9) > 1000)
        if saturated:
            log(f"  saturated at {qps:.0f} QPS offered; stopping the sweep")
            break
    return steps


def scrape(url: str) -> dict:
    """Server-side stage latencies and batch sizes from /metrics (means over the whole run)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    text = httpx.get(f"{url}/metrics", timeout=5).text
    sums: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("relstream_scorer_stage_seconds_sum", "relstream_scorer_stage_seconds_count"):
                sums[f"{s.labels['stage']}_{s.name.rsplit('_', 1)[1]}"] = s.value
            elif s.name in ("relstream_scorer_batch_size_sum", "relstream_scorer_batch_size_count"):
                sums[s.name] = s.value
    out = {f"mean_{stage}_ms": 1e3 * sums[f"{stage}_sum"] / sums[f"{stage}_count"]
           for stage in ("window_read", "tensor_build", "triton", "total") if sums.get(f"{stage}_count")}
    if sums.get("relstream_scorer_batch_size_count"):
        out["mean_batch_size"] = sums["relstream_scorer_batch_size_sum"] / sums["relstream_scorer_batch_size_count"]
        out["triton_calls"] = int(sums["relstream_scorer_batch_size_count"])
    return out


# ----- Kafka path ---------------------------------------------------------------------------------

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
    proc = Process("score", argv, log_path, env=_env(), cwd=ROOT).start()
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


# ----- deep baseline ------------------------------------------------------------------------------

def deep_baseline_latency(deep_dir: Path, project_path: Path, qps_steps, seconds: float, log,
                          n_payloads: int = 128) -> list[dict]:
    """The project's deep model at request time (offline/quality/deep.py), driven open-loop
    in-process by one worker (one predictor): latency = queueing + temporal subgraph sampling +
    deep GNN (+ head).

    ``deep_dir`` is the project's run directory (``relstream offline train-deep``: its
    ``deep_model.pt``; ``quality/deep_head.pt`` when the project has no fact-label head, else a
    random head of the same cost). Payloads are the fact table's last 128 rows, scored as of
    their own time. No HTTP in this path, so the comparison favours the baseline."""
    import numpy as np
    import torch

    from offline.data.sources import load_tables
    from offline.data.spec import load_project
    from offline.quality.deep import DeepRequestScorer, FrozenHead

    project = load_project(project_path)
    dataset = load_tables(project)
    plan = project.plan
    scorer = DeepRequestScorer.from_files(deep_dir / "deep_model.pt", project, dataset, plan.fact_table,
                                          project.spec.serving.task.label)
    n_rows = len(dataset.table(plan.fact_table))
    rows = np.arange(max(0, n_rows - n_payloads), n_rows)
    times = dataset.table(plan.fact_table)[plan.fact.time_column].to_numpy(np.int64)[rows]
    head = deep_dir / "quality" / "deep_head.pt"
    trained = not scorer.needs_head
    if scorer.needs_head:
        torch.manual_seed(0)
        scorer.head = FrozenHead(scorer.encode(rows[:1], times[:1]).shape[1]).eval()
        if head.exists():
            scorer.head.load_state_dict(torch.load(head, weights_only=True)["state_dict"])
            trained = True

    def score_one(i: int) -> None:
        k = i % len(rows)
        scorer.score(rows[k:k + 1], times[k:k + 1])

    for i in range(5):
        score_one(i)  # warm-up
    return [_deep_step(score_one, float(qps), seconds, log, str(project_path), n_rows, trained) for qps in qps_steps]


def _deep_step(score_one, qps: float, seconds: float, log, source: str, n_rows: int, trained_head: bool) -> dict:
    n = int(qps * seconds)
    t0 = time.perf_counter() + 0.05
    lat, unfinished = [], 0
    for i in range(n):
        sched = t0 + i / qps
        delay = sched - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if time.perf_counter() - t0 > 3 * seconds:  # hopelessly behind: stop, report a lower bound
            unfinished = n - i
            break
        score_one(i)
        lat.append(time.perf_counter() - sched)
    service = []
    for i in range(20):
        a = time.perf_counter()
        score_one(i)
        service.append(time.perf_counter() - a)
    res = {"qps": qps, "project": source, "fact_rows": n_rows,
           "trained_head": trained_head, "latency_from_schedule": summary_ms(lat), "unfinished": unfinished,
           "service_time_unloaded": summary_ms(service)}
    log(f"  deep baseline at {qps:.0f} QPS: p99 {res['latency_from_schedule'].get('p99_ms', float('nan')):.1f} ms"
        f" (service time p50 {res['service_time_unloaded']['p50_ms']:.1f} ms), {unfinished} not sent")
    return res


# ----- plot ---------------------------------------------------------------------------------------

def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweep = result.get("kafka_sweep") or ([result["kafka"]] if result.get("kafka") else [])
    panels = (["http"] if result["http"] or not sweep else []) + (["kafka"] if sweep else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "http":
            _plot_http(ax, result)
        else:
            _plot_kafka(ax, sweep)
    fig.suptitle("relstream scorer, all co-located on one 2-core machine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_http(ax, result: dict) -> None:
    for name, steps in result["http"].items():
        qps = [s["offered_qps"] for s in steps]
        for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
            ax.plot(qps, [s["latency_from_schedule"].get(key) or np.nan for s in steps], style, marker="o",
                    label=f"{name} {key.split('_')[0]}")
    if result.get("kafka"):
        k = result["kafka"]
        ax.scatter([k["rate"]], [k["latency"].get("p99_ms") or np.nan], marker="s", color="k",
                   label="Kafka path p99 (produce->score consumed)", zorder=5)
    deep = [d for d in (result.get("deep_sweep") or [result.get("deep_baseline") or {}])
            if d.get("latency_from_schedule", {}).get("p99_ms")]
    if deep:
        ax.plot([d["qps"] for d in deep], [d["latency_from_schedule"]["p99_ms"] for d in deep], "-", marker="x",
                ms=8, color="m", label="deep-at-request-time baseline p99 (in-process, one predictor)", zorder=5)
    ax.axhline(TARGET_HTTP["p99_ms"], color="r", lw=0.8, ls=":", label="HTTP p99 target (50 ms)")
    ax.axhline(100, color="grey", lw=0.8, ls=":", label="100 ms budget")
    ax.set_xlabel("offered QPS (open loop)")
    ax.set_ylabel("client latency (ms)")
    ax.set_yscale("log")
    ax.set_title("HTTP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_kafka(ax, sweep: list) -> None:
    rates = [k["rate"] for k in sweep]
    for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
        ax.plot(rates, [k["latency"].get(key) or np.nan for k in sweep], style, color="k",
                marker="o" if key == "p50_ms" else "s",
                label=f"produce -> score consumed, {key.split('_')[0]}")
    colours = {"produced_to_scorer": "tab:blue", "in_scorer": "tab:orange", "built_to_consumed": "tab:green"}
    for part, colour in colours.items():
        if all(part in k.get("latency_parts", {}) for k in sweep):
            ax.plot(rates, [k["latency_parts"][part].get("p99_ms") or np.nan for k in sweep], "-", marker=".",
                    color=colour, lw=0.8, label=f"p99 of part: {part.replace('_', ' ')}")
    ax.axhline(TARGET_KAFKA["p99_ms"], color="r", lw=0.8, ls=":", label="Kafka p99 target (100 ms)")
    ax.set_xlabel("events/s produced (open loop)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Kafka path (exactly once, read_committed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# ----- main ---------------------------------------------------------------------------------------

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
        topics = _topics(stack)
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


def cpu_points(result: dict) -> dict:
    """``{"kafka_<rate>": {"p99_ms": [...], "cpu_ms_per_event": [...]}, "http_<qps>": {...}}``: every
    run of each point of one benchmark run, in run order."""
    points: dict = {}
    for run in result.get("kafka_sweep", []):
        point = points.setdefault(f"kafka_{run['rate']:.0f}", {"p99_ms": [], "missing": [], "cpu_ms_per_event": [],
                                                               "cpu_ms_by_process": [], "load_avg": []})
        point["p99_ms"].append(run["latency"].get("p99_ms"))
        point["missing"].append(run["missing"])
        point["cpu_ms_per_event"].append(run["cpu_ms_per_event"]["all"])
        point["cpu_ms_by_process"].append(run["cpu_ms_per_event"])
        point["load_avg"].append(run["load_avg"])
    for step in result.get("http", {}).get("/v1/score", []):
        point = points.setdefault(f"http_{step['offered_qps']:.0f}", {"p99_ms": [], "errors": [], "cpu_ms_per_event": [],
                                                                      "cpu_ms_by_process": [], "load_avg": []})
        point["p99_ms"].append(step["latency_from_schedule"].get("p99_ms"))
        point["errors"].append(step["errors"])
        point["cpu_ms_per_event"].append(step["cpu_ms_per_request"]["scorer_stack"])
        point["cpu_ms_by_process"].append(step["cpu_ms_per_request"])
        point["load_avg"].append(step["load_avg"])
    return points


def merge_cpu_summary(path: Path, label: str, result: dict) -> dict:
    """Merge this run's points into ``path`` under ``label``. The ``after`` points are also the
    top-level keys (``{"kafka_1000": {"p99_ms": [run1, run2]}, ...}``), and ``cpu_ms_per_event``
    holds per label the median, over the runs of the Kafka point at the target rate (else the
    first point), of the CPU per scored event of all processes together."""
    summary = json.loads(path.read_text()) if path.exists() else {}
    run = summary.setdefault("runs", {}).setdefault(label, {"points": {}, "settings": [], "machine": []})
    run["points"].update(cpu_points(result))  # e.g. a Kafka run and an HTTP run of the same code
    run["settings"].append(result["settings"])
    run["machine"].append(result["machine"])
    run["model"] = result.get("model")
    points = run["points"]
    if label == "after":
        summary.update(points)
    headline = f"kafka_{TARGET_KAFKA['rate']}" if f"kafka_{TARGET_KAFKA['rate']}" in points else next(iter(points), None)
    if headline is not None:
        cpu = summary.setdefault("cpu_ms_per_event", {})
        cpu[label] = float(np.median(points[headline]["cpu_ms_per_event"]))
        cpu.setdefault("point", {})[label] = headline
        by_process: dict = {}
        for run in points[headline]["cpu_ms_by_process"]:
            for name, ms in run.items():
                by_process.setdefault(name, []).append(ms)
        cpu.setdefault("by_process", {})[label] = {k: float(np.median(v)) for k, v in by_process.items()}
        if "before" in cpu and "after" in cpu:
            cpu["after_over_before"] = cpu["after"] / cpu["before"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    return summary


def plot_cpu_summary(path: Path) -> None:
    """CPU ms per event by process, per label (bars), and p99 of every run of each point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    summary = json.loads(path.read_text())
    labels = list(summary.get("runs", {}))
    by_process = summary.get("cpu_ms_per_event", {}).get("by_process", {})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({n for label in labels for n in by_process.get(label, {}) if n != "all"})
    bottom = np.zeros(len(labels))
    for name in names:
        vals = np.array([by_process.get(label, {}).get(name, 0.0) for label in labels])
        ax1.bar(labels, vals, bottom=bottom, label=name)
        bottom += vals
    ax1.set_ylabel("CPU ms per scored event")
    ax1.set_title(f"CPU per event by process ({summary.get('cpu_ms_per_event', {}).get('point', {})})")
    ax1.legend(fontsize=8)
    points = sorted({p for label in labels for p in summary["runs"][label]["points"]})
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        for i, point in enumerate(points):
            runs = summary["runs"][label]["points"].get(point, {}).get("p99_ms", [])
            ax2.scatter([i + (j - (len(labels) - 1) / 2) * width] * len(runs), runs, label=label if i == 0 else None,
                        color=f"C{j}")
    ax2.set_xticks(range(len(points)), points)
    ax2.set_yscale("log")
    ax2.set_ylabel("p99 latency, ms (each run)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)


def set_autogroup_nice(pids, nice: int) -> list[str]:
    """Give the scheduling autogroups (sessions) of ``pids`` and their children this nice value."""
    import psutil
    groups = set()
    for pid in pids:
        try:
            family = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in family:
            try:
                Path(f"/proc/{p}/autogroup").write_text(str(nice))
                groups.add(Path(f"/proc/{p}/autogroup").read_text().split()[0])
            except OSError:
                pass  # no autogroup support, or the process is gone
    return sorted(groups)


def autogroup_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def _topics(stack) -> tuple[str, str, str]:
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    suffix = uuid.uuid4().hex[:8]
    names = (f"bench-facts-{suffix}", f"bench-scores-{suffix}", f"bench-dlq-{suffix}")
    futures = admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names])
    for f in futures.values():
        f.result(30)
    time.sleep(0.5)
    return names


def verdict(result: dict) -> dict:
    out = {}
    steps = result["http"].get("/v1/score") or []
    ok = [s for s in steps if s["errors"] == 0 and (s["latency_from_schedule"].get("p99_ms") or 1e9)
          <= TARGET_HTTP["p99_ms"] and s["achieved_qps"] >= 0.95 * s["offered_qps"]]
    if steps:
        best = max(ok, key=lambda s: s["offered_qps"]) if ok else None
        out["http_max_qps_meeting_p99_50ms_0_errors"] = best["offered_qps"] if best else 0
        out["http_target_met"] = bool(best and best["offered_qps"] >= TARGET_HTTP["qps"])
    if result.get("kafka"):
        k = result["kafka"]
        out["kafka_p99_ms"] = k["latency"].get("p99_ms")
        out["kafka_target_met"] = bool(k["missing"] == 0 and (k["latency"].get("p99_ms") or 1e9)
                                       <= TARGET_KAFKA["p99_ms"] and k["rate"] >= TARGET_KAFKA["rate"])
    deep_steps = [d for d in (result.get("deep_sweep") or [result.get("deep_baseline") or {}])
                  if d.get("p99_ratio_deep_over_distilled")]
    if deep_steps:
        # the ratio depends on the load: report it per load, and from which load on it holds
        out["deep_over_distilled_p99"] = {f"{d['qps']:g}": d["p99_ratio_deep_over_distilled"] for d in deep_steps}
        holding = [d["qps"] for d in deep_steps if d["p99_ratio_deep_over_distilled"] >= 20]
        out["deep_target_met_at_qps"] = holding
        out["deep_target_met_at_every_load"] = len(holding) == len(deep_steps)
    return out


if __name__ == "__main__":
    main()
