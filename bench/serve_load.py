"""The HTTP side of ``bench_serve.py``: open-loop load generators (aiohttp and a lean raw HTTP/1.1
client), the per-step result, CPU accounting per process, the QPS sweep and the server's /metrics."""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from bench.serve_env import TOKEN


def pct(xs, q) -> float | None:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else None


def summary_ms(xs) -> dict:
    xs = np.asarray(xs, dtype=np.float64) * 1e3
    if not len(xs):
        return {"n": 0}
    return {"n": int(len(xs)), "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99),
            "max_ms": float(xs.max()), "mean_ms": float(xs.mean())}



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
