"""`make demo`: the whole system on one box, from generated data to streamed scores.

    python3 -m relstream.demo [--customers 300 --terminals 600 --days 60] [--rate 200] [--keep-stack]

Stages (each prints its progress and timing; a failure names the stage and shows the log tail):

 1. stack       Kafka (KRaft), Redis, Triton on free 127.0.0.1 ports, state under RUN/stack
 2. generate    fraud transactions (`relstream offline generate`)
 3. train-deep  the temporal GNN (`relstream offline train-deep`)
 4. embed       daily embeddings of every customer/terminal (`relstream offline embed`)
 5. distill     point-in-time distillation rows + the shallow model (`relstream offline distill`)
 6. export      Triton model repository, loaded into the running Triton (`relstream offline export`)
 7. backfill    windows from the history before the held-out day (`relstream ingest --backfill`)
 8. services    `relstream ingest` and `relstream score` as subprocesses
 9. stream      the held-out day produced to Kafka at a fixed rate; every score consumed
10. parity      the same events re-scored from caught-up windows vs the offline model on
                offline-built tensors (max abs diff <= 1e-5)
11. http        `relstream serve` and one real curl call
12. report      RUN/report/report.md + latency/ROC/PR plots

This module is also the library the end-to-end tests use (:class:`Service`,
:class:`RateProducer`, :class:`ScoreCollector`, :func:`offline_reference_scores`, ...).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from kafka_io.polling import consume_ready
from relstream.stack.process import Process, ProcessExited, rss_bytes  # noqa: F401 - rss_bytes: the soak test's

TOKEN_ENV = "RELSTREAM_API_TOKEN"  # serve.token_env in the demo's config (the default)
REPO_ROOT = Path(__file__).resolve().parents[1]
TX_SUBJECT = "transactions-value"
SCORES_SUBJECT = "scores-value"
DLQ_SUBJECT = "dead-letters-value"
TX_FIELDS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
PARITY_TOLERANCE = 1e-5


class DemoError(RuntimeError):
    """A stage failed; carries the stage name and the tail of the log that explains it."""

    def __init__(self, stage: str, message: str, log_path: Path | None = None, tail: str = ""):
        self.stage = stage
        self.log_path = log_path
        self.tail = tail
        text = f"stage '{stage}' failed: {message}"
        if log_path is not None:
            text += f"\n  log: {log_path}"
        if tail:
            text += "\n  last lines:\n" + "\n".join("    " + line for line in tail.rstrip().splitlines())
        super().__init__(text)


def log_tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not Path(path).exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


# ----- subprocesses -----------------------------------------------------------------------------

def relstream_argv(config: Path | None, *args: str) -> list[str]:
    """``python -m relstream [--config FILE] ARGS`` with this interpreter.

    (``-m relstream``, not ``-m relstream.cli``: run as ``__main__``, the CLI module would exist
    twice and a plugin's ``relstream.cli.CliError`` would escape as a traceback.)"""
    argv = [sys.executable, "-m", "relstream"]
    if config is not None:
        argv += ["--config", str(config)]
    return argv + [str(a) for a in args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PYTHONFAULTHANDLER", "1")  # SIGABRT -> every thread's stack in the log (Service.dump_stacks)
    # two shared cores: one torch/BLAS thread per service keeps them from fighting
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run_step(stage: str, argv: Sequence[str], log_path: Path, timeout_s: float = 1800,
             env: Mapping[str, str] | None = None) -> str:
    """Run one command to completion with output to ``log_path``; DemoError on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                  env=child_env(env), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DemoError(stage, f"timed out after {timeout_s:.0f}s: {shlex.join(argv)}", log_path,
                            log_tail(log_path)) from None
    if proc.returncode != 0:
        raise DemoError(stage, f"exit code {proc.returncode}: {shlex.join(argv)}", log_path, log_tail(log_path))
    return log_tail(log_path, 5)


class Service(Process):
    """A long-running relstream subprocess (ingest, score, serve) of the demo, with its own log
    file (:class:`relstream.stack.process.Process`); failures are DemoErrors of a stage."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None):
        super().__init__(name, argv, log_path, env=child_env(env), cwd=REPO_ROOT)

    def check_alive(self, stage: str) -> None:
        if self.proc is not None and not self.alive:
            raise DemoError(stage, f"{self.name} exited with code {self.proc.returncode}", self.log_path,
                            log_tail(self.log_path))

    def dump_stacks(self, lines: int = 80) -> str:
        """A hung service's Python stacks (faulthandler on SIGABRT); the process dies doing it."""
        if not self.alive:
            return self.tail(lines)
        os.kill(self.proc.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.tail(lines)

    def wait_for_log(self, needle: str, timeout_s: float, stage: str, count: int = 1) -> None:
        """Wait until ``needle`` occurs ``count`` times in the log (restarts append to it)."""
        try:
            super().wait_for_log(needle, timeout_s, count)
        except ProcessExited:
            self.check_alive(stage)
        except TimeoutError:
            raise DemoError(stage, f"{self.name} did not log {needle!r} within {timeout_s:.0f}s", self.log_path,
                            self.tail()) from None


# ----- events on Kafka ----------------------------------------------------------------------------

def open_codec(registry_dir: str | Path):
    """The Avro codec (Confluent wire format) over the file registry the services use."""
    from schemas.registry import AvroCodec, FileSchemaRegistry, load_builtin_schemas

    registry = FileSchemaRegistry(registry_dir)
    load_builtin_schemas(registry)
    return AvroCodec(registry)


def transaction_records(frame) -> list[dict]:
    """Plan-shaped transaction dicts (the Avro `Transaction` record) from a normalised frame."""
    cols = {c: frame[c].to_numpy() for c in TX_FIELDS}
    out = []
    for i in range(len(frame)):
        out.append({"transaction_id": int(cols["transaction_id"][i]), "tx_datetime": int(cols["tx_datetime"][i]),
                    "customer_id": int(cols["customer_id"][i]), "terminal_id": int(cols["terminal_id"][i]),
                    # the wire carries float32: keep exactly what the services will see
                    "tx_amount": float(np.float32(cols["tx_amount"][i]))})
    return out


def admin_client(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1, timeout_s: float = 30.0) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = admin_client(bootstrap)
    names = list(names)
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
                                  operation_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        if all(n in md.topics and md.topics[n].error is None and md.topics[n].partitions
               and all(p.leader >= 0 for p in md.topics[n].partitions.values()) for n in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {names} not ready after {timeout_s}s")


class RateProducer:
    """Open-loop producer: event i is handed to Kafka at t0 + i / rate (no coordinated omission)."""

    def __init__(self, bootstrap: str, codec: Any, extra: Mapping[str, Any] | None = None):
        from confluent_kafka import Producer

        self.codec = codec
        # librdkafka's default re-bootstrap here (not KAFKA_CLIENT_DEFAULTS): a plain producer needs
        # no group coordinator (librdkafka #5511), and with "none" a broker restart can leave it
        # without any broker for good (#5301: a 0-broker metadata answer while the broker starts)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 1, **dict(extra or {})})
        self.errors: list[str] = []

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.errors.append(str(err))

    def produce_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.01)
        self.producer.poll(0)

    def produce(self, topic: str, records: Sequence[Mapping[str, Any]], rate: float | None = None,
                subject: str = TX_SUBJECT, key_field: str | None = "customer_id",
                clock: Callable[[], int] = time.time_ns, stop: threading.Event | None = None,
                on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Produce records (Avro); returns the wall-clock ns at which each was produced."""
        values = [self.codec.encode(subject, dict(r)) for r in records]  # encode first: pacing stays exact
        keys = [str(r[key_field]).encode() if key_field else None for r in records]
        produced = np.full(len(records), -1, np.int64)
        start = time.perf_counter()
        for i, (value, key) in enumerate(zip(values, keys)):
            if stop is not None and stop.is_set():
                break
            if rate:
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            produced[i] = clock()
            self.produce_raw(topic, value, key)
            if on_progress is not None and i % 500 == 0:
                on_progress(i)
        return produced

    def flush(self, timeout_s: float = 60.0) -> None:
        left = self.producer.flush(timeout_s)
        if left:
            raise RuntimeError(f"{left} records not acknowledged by Kafka after {timeout_s}s")
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} produce errors, e.g. {self.errors[0]}")


@dataclass
class ScoreSeen:
    consumed_ns: int
    record: dict
    count: int = 1


class ScoreCollector(threading.Thread):
    """Consumes a scores topic (read_committed) in the background and indexes records by event id."""

    def __init__(self, bootstrap: str, topic: str, codec: Any, group: str | None = None,
                 clock: Callable[[], int] = time.time_ns):
        super().__init__(daemon=True, name=f"scores-{topic}")
        from confluent_kafka import Consumer

        self.topic = topic
        self.codec = codec
        self.clock = clock
        from relstream.config import KAFKA_CLIENT_DEFAULTS
        self.consumer = Consumer({"bootstrap.servers": bootstrap, **KAFKA_CLIENT_DEFAULTS,
                                  "group.id": group or f"e2e-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "isolation.level": "read_committed", "session.timeout.ms": 6000,
                                  "fetch.wait.max.ms": 10})
        self.seen: dict[str, ScoreSeen] = {}
        self.duplicates = 0  # records with an event id already seen at another offset
        self.rereads = 0
        self._offsets: set[tuple[int, int]] = set()
        self.undecodable = 0
        self.records = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._ready = threading.Event()

    def run(self) -> None:
        def assigned(consumer, partitions):
            self._ready.set()

        self.consumer.subscribe([self.topic], on_assign=assigned)
        try:
            while not self._halt.is_set():
                msgs = consume_ready(self.consumer, 500, 0.05)  # latency is measured: no batch-fill wait
                now = self.clock()
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    try:
                        _, rec = self.codec.decode(msg.value())
                    except Exception:  # noqa: BLE001 - counted; the test asserts it stays 0
                        self.undecodable += 1
                        continue
                    with self._lock:
                        # a re-read of the same offset (this consumer lost its position in a group
                        # rebalance, e.g. after a broker restart) is not a duplicate record
                        where = (msg.partition(), msg.offset())
                        if where in self._offsets:
                            self.rereads += 1
                            continue
                        self._offsets.add(where)
                        self.records += 1
                        eid = str(rec["event_id"])
                        if eid in self.seen:
                            self.seen[eid].count += 1
                            self.duplicates += 1
                        else:
                            self.seen[eid] = ScoreSeen(now, rec)
        finally:
            self.consumer.close()

    def wait_assigned(self, timeout_s: float = 30.0) -> None:
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"score collector on {self.topic} got no partition within {timeout_s}s")

    def count_of(self, ids: Iterable[str]) -> int:
        with self._lock:
            return sum(1 for i in ids if i in self.seen)

    def missing(self, ids: Iterable[str]) -> list[str]:
        with self._lock:
            return [i for i in ids if i not in self.seen]

    def wait_for(self, ids: Sequence[str], timeout_s: float, check: Callable[[], None] | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Wait until every id has a score; returns the ids still missing at the timeout."""
        ids = list(ids)
        deadline = time.monotonic() + timeout_s
        last_report = 0.0
        while True:
            missing = self.missing(ids)
            if not missing or time.monotonic() > deadline:
                return missing
            if check is not None:
                check()
            if on_progress is not None and time.monotonic() - last_report > 2:
                on_progress(len(ids) - len(missing), len(ids))
                last_report = time.monotonic()
            time.sleep(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0, isolation: str = "read_committed") -> list:
    """Every record of a topic from the beginning (until no new record for a short while)."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-read-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True})
    c.subscribe([topic])
    out, deadline, eof = [], time.monotonic() + timeout_s, set()
    parts = None
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if parts is None and c.assignment():
                parts = {p.partition for p in c.assignment()}
            if msg is None:
                if parts is not None and eof >= parts:
                    break
                continue
            if msg.error() is not None:
                if msg.error().code() == -191:  # _PARTITION_EOF
                    eof.add(msg.partition())
                continue
            eof.discard(msg.partition())
            out.append(msg)
    finally:
        c.close()
    return out


def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int | None:
    """Sum over the topics' partitions of (high watermark - committed offset); None if not known yet."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in topics for p in md.topics[t].partitions]
        try:
            committed = c.committed(tps, timeout=10)
        except KafkaException as exc:  # e.g. NOT_COORDINATOR while a fresh broker loads its groups
            if exc.args and getattr(exc.args[0], "retriable", lambda: False)() or "COORDINATOR" in str(exc):
                return None
            raise
        lag = 0
        for tp in committed:
            _lo, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            if tp.offset < 0:
                if hi > 0:
                    return None
                continue
            lag += max(0, hi - tp.offset)
        return lag
    finally:
        c.close()


def wait_caught_up(bootstrap: str, group: str, topics: Sequence[str], timeout_s: float,
                   check: Callable[[], None] | None = None) -> float:
    """Wait until the group committed everything in the topics; returns seconds waited."""
    t0 = time.monotonic()
    while True:
        lag = group_lag(bootstrap, group, topics)
        if lag == 0:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"group {group} still {lag} records behind on {list(topics)} after {timeout_s:.0f}s")
        if check is not None:
            check()
        time.sleep(0.2)


# ----- the offline reference (parity) --------------------------------------------------------------

def offline_reference_scores(version_dir: str | Path, window_records: Sequence[Mapping[str, Any]],
                             events: Sequence[Mapping[str, Any]], chunk: int = 256,
                             plan=None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``events`` by the exported model run in-process, on tensors built offline.

    The windows come from an in-memory window store (``rti_store.MemoryWindowStore``) holding the
    interactions of ``window_records`` (appended through ``schemas.tensors.interactions_of``, the
    one row -> window path); each event's windows are read as of its own time and its tensors are
    built by ``schemas.tensors.build_tensors`` -- the functions the distillation uses. Scoring is
    the bundle's own code (``offline.bundle.split_scores``). Returns (scores float32 [N],
    cold_start int8 [N, K]).
    """
    from offline.bundle import load_bundle, split_scores
    from rti_store import MemoryWindowStore
    from schemas.tensors import anchor_time_of, build_tensors, interactions_of, window_keys

    bundle = load_bundle(version_dir)
    plan = plan or bundle.plan
    store = MemoryWindowStore(plan)
    items = []
    for rec in window_records:
        items.extend(interactions_of(plan, plan.fact_table, rec))
        if len(items) >= 20_000:
            store.append(items)
            items = []
    if items:
        store.append(items)
    scores = np.zeros(len(events), np.float32)
    cold = np.zeros((len(events), len(plan.embedding_keys)), np.int8)
    for lo in range(0, len(events), chunk):
        part = events[lo:lo + chunk]
        keys, as_of = [], []
        for ev in part:
            ks = window_keys(plan, ev)
            keys.extend(ks)
            as_of.extend([anchor_time_of(plan, ev)] * len(ks))
        windows = store.read_many(keys, as_of)
        n = len(plan.hops)
        requests = []
        for k, ev in enumerate(part):
            wins = {hk: w for (hk, _), w in zip(keys[k * n:(k + 1) * n], windows[k * n:(k + 1) * n])}
            requests.append(build_tensors(plan, ev, wins))
        for j, (s, c) in enumerate(split_scores(bundle, requests)):
            scores[lo + j] = float(np.asarray(s).reshape(-1)[0])
            if c is not None:
                cold[lo + j] = np.asarray(c).reshape(-1)
    return scores, cold


def event_time_reference_scores(version_dir: str | Path, transactions, score_mask: np.ndarray,
                                chunk: int = 256) -> np.ndarray:
    """Scores of the masked events on the distillation's own rows (``offline.distill.replay_rows``:
    every event's windows as of its time while the events are replayed in event-time order, i.e.
    what the model was trained on), scored in-process by the bundle. Row order = frame order."""
    from offline.bundle import load_bundle, split_scores
    from offline.distill import replay_rows

    bundle = load_bundle(version_dir)
    rows = replay_rows(bundle.plan, transactions, score_mask, progress=False)
    out = np.zeros(len(rows), np.float32)
    for lo in range(0, len(rows), chunk):
        reqs = [rows.request(i) for i in range(lo, min(len(rows), lo + chunk))]
        for j, (s, _c) in enumerate(split_scores(bundle, reqs)):
            out[lo + j] = float(np.asarray(s).reshape(-1)[0])
    return out


def latest_version_dir(model_repository: str | Path, model_name: str) -> Path:
    model_dir = Path(model_repository) / model_name
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
        if model_dir.exists() else []
    if not versions:
        raise FileNotFoundError(f"no version of model {model_name!r} under {model_dir}")
    return model_dir / str(versions[-1])


def load_model(triton_http_url: str, model_name: str, timeout_s: float = 180.0) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton_http_url.split("://", 1)[-1], network_timeout=timeout_s,
                                              connection_timeout=timeout_s)
    try:
        client.load_model(model_name)
        if not client.is_model_ready(model_name):
            raise RuntimeError(f"Triton reports model {model_name!r} not ready after load")
    finally:
        client.close()


def warm_up(triton_grpc_url: str, model_name: str, version_dir: str | Path, calls: int = 3) -> None:
    """A few inferences on synthetic requests, so the first streamed event does not pay for the
    Python backend's first execute (the requests are far from any real data; nothing is stored)."""
    import tritonclient.grpc as grpcclient

    from offline.export import synthetic_requests
    from schemas.plan import load_plan
    from schemas.tensors import stack_requests

    plan = load_plan(Path(version_dir) / "plan.yaml")
    client = grpcclient.InferenceServerClient(triton_grpc_url)
    try:
        for i in range(calls):
            tensors = stack_requests(plan, synthetic_requests(plan, n=4, seed=i))
            inputs = []
            for spec in plan.tensors:
                arr = np.asarray(tensors[spec.name])
                inp = grpcclient.InferInput(spec.name, list(arr.shape), spec.triton_dtype)
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            client.infer(model_name, inputs)
    finally:
        client.close()


# ----- configuration for the services ------------------------------------------------------------

def write_service_config(path: Path, stack, *, run_dir: Path, model_name: str, topics: Mapping[str, Any],
                         registry_dir: Path, redis_db: int = 0, ingest: Mapping[str, Any] | None = None,
                         score: Mapping[str, Any] | None = None, serve: Mapping[str, Any] | None = None,
                         plan: str | None = None) -> Path:
    """A relstream.yaml pointing every service at ``stack`` (a LocalStack)."""
    import yaml

    cfg: dict[str, Any] = {
        "run_dir": str(run_dir),
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
        "redis": {"url": f"redis://127.0.0.1:{stack.ports['redis']}/{redis_db}"},
        "triton": {"url": stack.triton_http_url, "model_name": model_name},
        "topics": dict(topics),
        "ingest": {"registry": str(registry_dir), **dict(ingest or {})},
        "score": {"registry_dir": str(registry_dir), "triton_grpc_url": stack.triton_grpc_url, **dict(score or {})},
        "serve": {"triton_grpc_url": stack.triton_grpc_url, **dict(serve or {})},
    }
    if plan:
        cfg["plan"] = plan
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ----- the demo --------------------------------------------------------------------------------------

@dataclass
class DemoOptions:
    run_dir: Path
    customers: int = 300
    terminals: int = 600
    days: int = 60
    seed: int = 1
    rate: float = 200.0
    holdout_day: int | None = None  # default: the first day of the evaluation test period
    deep_epochs: int = 2
    distill_epochs: int = 3
    keep_stack: bool = False
    parity: bool = True
    http: bool = True
    score_timeout_s: float = 300.0
    threads: int = 1


@dataclass
class StageClock:
    timings: list = field(default_factory=list)
    total: int = 12
    out: Any = sys.stdout

    @contextlib.contextmanager
    def stage(self, name: str, what: str):
        from relstream.report import StageTiming

        n = len(self.timings) + 1
        print(f"[{n:>2}/{self.total}] {name:<10} {what} ...", file=self.out, flush=True)
        t0 = time.monotonic()
        detail: dict[str, str] = {"text": ""}
        try:
            yield detail
        except DemoError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure becomes a named stage error
            raise DemoError(name, f"{type(exc).__name__}: {exc}") from exc
        took = time.monotonic() - t0
        self.timings.append(StageTiming(name, took, detail["text"]))
        extra = f" ({detail['text']})" if detail["text"] else ""
        print(f"        {name:<10} done in {took:.1f}s{extra}", file=self.out, flush=True)


class Demo:
    """The demo run; every resource it starts is registered for cleanup."""

    MODEL_NAME = "relstream"
    TOPIC_TX = "relstream.transactions"
    TOPIC_SCORES = "relstream.scores"
    TOPIC_SCORES_REPLAY = "relstream.scores.replay"
    TOPIC_DLQ = "relstream.dlq"
    API_TOKEN = "demo-token-" + uuid.uuid4().hex[:12]

    def __init__(self, opts: DemoOptions, out=sys.stdout):
        self.o = opts
        self.out = out
        self.run_dir = Path(opts.run_dir).resolve()
        self.offline_dir = self.run_dir / "offline"
        self.logs = self.run_dir / "logs"
        self.registry_dir = self.run_dir / "schema-registry"
        self.clock = StageClock(out=out)
        self.stack = None
        self.services: list[Service] = []
        self.collectors: list[ScoreCollector] = []

    def say(self, text: str) -> None:
        print(f"        {text}", file=self.out, flush=True)

    # ----- stages ----------------------------------------------------------------------------
    def run(self) -> int:
        from relstream.report import format_summary, summarise, write_report

        self.run_dir.mkdir(parents=True, exist_ok=True)
        print(f"relstream demo: run directory {self.run_dir}", file=self.out, flush=True)
        try:
            self.stage_stack()
            self.stage_generate()
            self.stage_train_deep()
            self.stage_embed()
            self.stage_distill()
            self.stage_export()
            self.stage_backfill()
            self.stage_services()
            stream = self.stage_stream()
            parity = self.stage_parity() if self.o.parity else None
            curl = self.stage_http() if self.o.http else None
            with self.clock.stage("report", "writing report.md and plots") as d:
                summary = summarise(self.run_dir, stream, self.clock.timings, self.data_info, parity=parity,
                                    curl=curl, offline_metrics=self.offline_metrics())
                report = write_report(summary, stream, self.run_dir / "report")
                d["text"] = str(report)
            print(format_summary(summary), file=self.out, flush=True)
            print(f"report: {report}", file=self.out, flush=True)
            ok = summary.unscored == 0 and (parity is None or parity.ok)
            return 0 if ok else 1
        finally:
            self.cleanup()

    def stage_stack(self) -> None:
        from relstream.stack import LocalStack

        with self.clock.stage("stack", "starting Kafka (KRaft), Redis, Triton on free ports") as d:
            # the stack's state (stack.json, pids, kafka/, redis/, logs/<component>.log) lives in the run
            # directory itself, so `relstream --config RUN/relstream.yaml stack status|down` finds it
            self.stack = LocalStack(self.run_dir, self.run_dir / "models")
            try:
                took = self.stack.up()
            except Exception as exc:
                tails = "\n".join(f"--- {n}\n{self.stack.log_tail(n, 10)}" for n in self.stack.components)
                raise DemoError("stack", str(exc), self.run_dir / "logs", tails) from None
            d["text"] = ", ".join(f"{k} {v:.1f}s" for k, v in took.items())
            for name, addr in self.stack.addresses().items():
                self.say(f"{name:<15} {addr}")

    def offline(self, stage: str, *args: str, timeout_s: float = 1800) -> str:
        return run_step(stage, relstream_argv(None, "offline", *args, "--run-dir", self.offline_dir, "--no-progress"),
                        self.logs / f"{stage}.log", timeout_s)

    def stage_generate(self) -> None:
        o = self.o
        with self.clock.stage("generate", f"simulating {o.customers} customers x {o.terminals} terminals x "
                                          f"{o.days} days") as d:
            self.offline("generate", "generate", "--customers", o.customers, "--terminals", o.terminals,
                         "--days", o.days, "--seed", o.seed)
            from offline.datasets.loader import load_transactions

            ds = load_transactions(self.offline_dir / "transactions.parquet")
            self.tx = ds.table("transactions")
            d["text"] = f"{len(self.tx):,} transactions, fraud rate {self.tx['tx_fraud'].mean():.2%}"

    def stage_train_deep(self) -> None:
        with self.clock.stage("train-deep", f"temporal GNN, {self.o.deep_epochs} epochs, CPU") as d:
            self.offline("train-deep", "train-deep", "--epochs", self.o.deep_epochs, "--seed", self.o.seed,
                         "--threads", self.o.threads)
            d["text"] = str(self.offline_dir / "model.pt")

    def stage_embed(self) -> None:
        with self.clock.stage("embed", "daily embeddings of every customer and terminal") as d:
            # snapshots from two weeks before the training period on: the distillation's earliest anchor
            # looks back max_embedding_offset (14 days); earlier snapshots would never be used
            from offline.evaluate import SplitConfig

            first = max(1, SplitConfig().fitted(self.o.days).train_start_day - 15)
            self.offline("embed", "embed", "--threads", self.o.threads, "--first-day", first)
            d["text"] = str(self.offline_dir / "embeddings.parquet")

    def stage_distill(self) -> None:
        with self.clock.stage("distill", "point-in-time rows + shallow model") as d:
            self.offline("distill", "distill", "--epochs", self.o.distill_epochs, "--seed", self.o.seed,
                         "--threads", self.o.threads)
            d["text"] = "shallow model trained"

    def stage_export(self) -> None:
        with self.clock.stage("export", "Triton model repository + load") as d:
            run_step("export", relstream_argv(None, "offline", "export", "--run-dir", self.offline_dir,
                                              "--repo", self.stack.model_repository, "--model-name", self.MODEL_NAME),
                     self.logs / "export.log", 900)
            self.version_dir = latest_version_dir(self.stack.model_repository, self.MODEL_NAME)
            load_model(self.stack.triton_http_url, self.MODEL_NAME)
            warm_up(self.stack.triton_grpc_url, self.MODEL_NAME, self.version_dir)
            d["text"] = f"{self.version_dir} loaded"

    def holdout_bounds(self) -> tuple[int, int, int]:
        from offline.datasets.base import NS_PER_DAY

        t = self.tx["tx_datetime"].to_numpy(np.int64)
        day0 = int(t.min()) - int(t.min()) % NS_PER_DAY
        day = self.o.holdout_day
        if day is None:
            day = self._test_start_day()
        return day, day0 + day * NS_PER_DAY, day0 + (day + 1) * NS_PER_DAY

    def _test_start_day(self) -> int:
        from offline.evaluate import SplitConfig

        return SplitConfig().fitted(self.o.days).test_start_day

    def stage_backfill(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        day, lo, hi = self.holdout_bounds()
        times = self.tx["tx_datetime"].to_numpy(np.int64)
        self.history = self.tx[times < lo]
        self.holdout = self.tx[(times >= lo) & (times < hi)].reset_index(drop=True)
        if len(self.holdout) == 0:
            raise DemoError("backfill", f"held-out day {day} has no transactions")
        self.data_info = {
            "description": f"{self.o.customers} customers x {self.o.terminals} terminals x {self.o.days} days, "
                           f"{len(self.tx):,} transactions (seed {self.o.seed})",
            "holdout": f"day {day} ({len(self.holdout):,} transactions), history {len(self.history):,} transactions",
            "holdout_day": day,
        }
        self.write_config()
        with self.clock.stage("backfill", f"windows from {len(self.history):,} history transactions") as d:
            path = self.run_dir / "history.parquet"
            pq.write_table(pa.Table.from_pandas(self.history[list(TX_FIELDS)], preserve_index=False), path)
            tail = run_step("backfill", relstream_argv(self.config, "ingest", "--backfill", path, "--no-progress"),
                            self.logs / "backfill.log", 900)
            try:
                rep = json.loads(tail.strip().splitlines()[-1])
                d["text"] = f"{rep['rows']:,} rows -> {rep['interactions']:,} window appends in {rep['seconds']:.1f}s"
            except (ValueError, KeyError, IndexError):
                d["text"] = tail.strip()[-160:]

    def write_config(self) -> None:
        self.config = write_service_config(
            self.run_dir / "relstream.yaml", self.stack, run_dir=self.run_dir, model_name=self.MODEL_NAME,
            topics={"facts": self.TOPIC_TX, "interactions": [self.TOPIC_TX], "scores": self.TOPIC_SCORES,
                    "dlq": self.TOPIC_DLQ},
            registry_dir=self.registry_dir,
            # the history file is reloaded if the windows are ever rebuilt (docs/streams.md)
            ingest={"group_id": "demo-ingest", "batch_timeout_s": 0.02,
                    "backfill_sources": [{"path": str(self.run_dir / "history.parquet")}]},
            score={"group_id": "demo-scorer", "transactional_id": "demo-scorer-0", "append_scored": True},
            serve={"port": 0})

    def start_service(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Service:
        svc = Service(name, relstream_argv(self.config, *args), self.logs / f"{name}.log", env).start()
        self.services.append(svc)
        return svc

    def stage_services(self) -> None:
        with self.clock.stage("services", "relstream ingest + relstream score") as d:
            create_topics(self.stack.kafka_bootstrap, [self.TOPIC_TX, self.TOPIC_SCORES, self.TOPIC_SCORES_REPLAY,
                                                       self.TOPIC_DLQ])
            self.ingest = self.start_service("ingest", "ingest", "--no-progress")
            self.scorer = self.start_service("score", "score")
            codec = open_codec(self.registry_dir)
            self.collector = ScoreCollector(self.stack.kafka_bootstrap, self.TOPIC_SCORES, codec)
            self.collectors.append(self.collector)
            self.collector.start()
            self.collector.wait_assigned()
            wait_group_members(self.stack.kafka_bootstrap, ["demo-ingest", "demo-scorer"], 90,
                               check=lambda: [s.check_alive("services") for s in (self.ingest, self.scorer)])
            # the backfill wrote windows but no completeness marker: ingest claims a rebuild on
            # start (Kafka replay + the backfill file again); scores are flagged until it is done
            took = self.wait_windows_complete(120, check=lambda: self.ingest.check_alive("services"))
            d["text"] = (f"ingest pid {self.ingest.pid}, score pid {self.scorer.pid}; "
                         f"window store complete after {took:.1f}s")

    def wait_windows_complete(self, timeout_s: float, check: Callable[[], Any]) -> float:
        from relstream.config import load_config, redis_client, serving_plan
        from rti_store import Completeness, RedisWindowStore

        cfg = load_config(self.config)
        store = RedisWindowStore(serving_plan(cfg), redis_client(cfg))
        t0 = time.monotonic()
        try:
            while store.marker().completeness is not Completeness.COMPLETE:
                check()
                if time.monotonic() - t0 > timeout_s:
                    raise DemoError("services", f"the window store was not complete after {timeout_s:.0f}s "
                                                f"(state {store.marker().completeness.value}); see logs/ingest.log")
                time.sleep(0.05)
        finally:
            store.close()
        return time.monotonic() - t0

    def stage_stream(self):
        from relstream.report import StreamMeasurement

        n = len(self.holdout)
        with self.clock.stage("stream", f"{n:,} held-out transactions at {self.o.rate:g}/s through Kafka") as d:
            records = transaction_records(self.holdout)
            ids = [str(r["transaction_id"]) for r in records]
            self.data_info["load_avg_at_stream"] = round(os.getloadavg()[0], 1)  # 2 shared cores: context
            producer = RateProducer(self.stack.kafka_bootstrap, open_codec(self.registry_dir))
            t0 = time.monotonic()
            produced = producer.produce(self.TOPIC_TX, records, rate=self.o.rate)
            producer.flush()
            produce_s = time.monotonic() - t0
            self.say(f"produced {n:,} in {produce_s:.1f}s; waiting for every score ...")

            def check():
                for s in (self.ingest, self.scorer):
                    s.check_alive("stream")

            missing = self.collector.wait_for(
                ids, self.o.score_timeout_s, check=check,
                on_progress=lambda k, total: self.say(f"scored {k:,}/{total:,}"))
            if missing:
                raise DemoError("stream", f"{len(missing)} of {n} events unscored after {self.o.score_timeout_s:.0f}s "
                                          f"(e.g. {missing[:5]})", self.scorer.log_path, self.scorer.tail())
            seen = [self.collector.seen[i] for i in ids]
            consumed = np.array([s.consumed_ns for s in seen], np.int64)
            scores = np.array([s.record["score"] for s in seen], np.float32)
            stream = StreamMeasurement(
                event_ids=np.array(ids, dtype=object), produced_ns=produced, consumed_ns=consumed, scores=scores,
                labels=self.holdout["tx_fraud"].to_numpy(np.int64), offered_rate=self.o.rate,
                produce_seconds=produce_s, drain_seconds=(consumed.max() - produced.min()) / 1e9,
                duplicates=self.collector.duplicates,
                degraded=sum(1 for s in seen if any(not f.startswith("embedding_missing") for f in s.record["degraded"])),
                cold_start=sum(1 for s in seen if s.record["cold_start"]))
            self.stream_ids = ids
            self.stream_records = records
            self.produced_ns = produced
            lat = (consumed - produced) / 1e6
            d["text"] = f"all {n:,} scored, p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms"
            return stream

    def stage_parity(self):
        from relstream.report import parity_of

        with self.clock.stage("parity", "re-score from caught-up windows vs the offline model") as d:
            # 1. the windows hold every streamed event once ingest committed them all
            waited = wait_caught_up(self.stack.kafka_bootstrap, "demo-ingest", [self.TOPIC_TX], 120,
                                    check=lambda: self.ingest.check_alive("parity"))
            # 2. a second scorer (own group, own transactional id) re-reads the held-out day
            replay = self.start_service("score-replay", "score", env={
                "RELSTREAM__SCORE__GROUP_ID": "demo-scorer-replay",
                "RELSTREAM__SCORE__TRANSACTIONAL_ID": "demo-scorer-replay-0",
                "RELSTREAM__SCORE__SCORES_TOPIC": self.TOPIC_SCORES_REPLAY,
                "RELSTREAM__SCORE__APPEND_SCORED": "false"})
            collector = ScoreCollector(self.stack.kafka_bootstrap, self.TOPIC_SCORES_REPLAY,
                                       open_codec(self.registry_dir))
            self.collectors.append(collector)
            collector.start()
            missing = collector.wait_for(self.stream_ids, self.o.score_timeout_s,
                                         check=lambda: replay.check_alive("parity"))
            if missing:
                raise DemoError("parity", f"replay scorer left {len(missing)} events unscored", replay.log_path,
                                replay.tail())
            replay.stop()
            online = np.array([collector.seen[i].record["score"] for i in self.stream_ids], np.float32)
            # 3. offline: same window contents in the in-memory store, tensors built offline
            window_records = transaction_records(self.history) + self.stream_records
            offline, _cold = offline_reference_scores(self.version_dir, window_records, self.stream_records)
            parity = parity_of(self.stream_ids, online, offline, PARITY_TOLERANCE)
            # 4. the live pass against the training-time rows (event-time replay of the distillation)
            live = np.array([self.collector.seen[i].record["score"] for i in self.stream_ids], np.float32)
            times = self.tx["tx_datetime"].to_numpy(np.int64)
            _day, lo, hi = self.holdout_bounds()
            event_time = event_time_reference_scores(self.version_dir, self.tx, (times >= lo) & (times < hi))
            self.save_events(live=live, replay=online, offline=offline, training_rows=event_time)
            self.data_info["live_equal_replay"] = int((np.abs(live - online) <= PARITY_TOLERANCE).sum())
            self.data_info["live_equal_event_time"] = int((np.abs(live - event_time) <= PARITY_TOLERANCE).sum())
            self.data_info["replay_equal_event_time"] = int((np.abs(online - event_time) <= PARITY_TOLERANCE).sum())
            d["text"] = (f"max abs diff online vs offline = {parity.max_abs_diff:.2e} over {parity.events:,} events; "
                         f"ingest caught up after {waited:.1f}s; live pass = training-time rows for "
                         f"{self.data_info['live_equal_event_time']:,}/{len(online):,} events")
            return parity

    def stage_http(self):
        from relstream.report import CurlCall, curl_command, token_export

        with self.clock.stage("http", "relstream serve + one curl call") as d:
            # port 0 in the config: serve binds a free port and prints its real address
            serve = self.start_service("serve", "serve", env={TOKEN_ENV: self.API_TOKEN})
            url = serve_address(serve, 90, stage="http")
            wait_http(f"{url}/readyz", 90, check=lambda: serve.check_alive("http"))
            row = dict(self.stream_records[len(self.stream_records) // 2])
            command = curl_command(f"{url}/v1/score", json.dumps(row), TOKEN_ENV)
            # run exactly the printed line through a shell, so what is shown is what worked
            proc = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True,
                                  text=True, timeout=30, env={**os.environ, TOKEN_ENV: self.API_TOKEN})
            if proc.returncode != 0:
                raise DemoError("http", f"curl failed: {proc.stderr.strip()}", serve.log_path, serve.tail())
            text, _, code = proc.stdout.rpartition("\n")
            if not code.strip().isdigit() or int(code) != 200:
                raise DemoError("http", f"HTTP {code}: {text[:300]}", serve.log_path, serve.tail())
            d["text"] = f"HTTP {code}: {text.strip()[:120]}"
            if self.o.keep_stack:  # left running for the hand-off; `relstream stack down` stops it
                return CurlCall(command, int(code), text, token_export=token_export(self.API_TOKEN, TOKEN_ENV))
            serve.stop()
            return CurlCall(command, int(code), text)

    def save_events(self, **scores: np.ndarray) -> Path:
        """Per-event CSV next to the report: ids, label, latency and every score compared."""
        import pandas as pd

        frame = pd.DataFrame({"transaction_id": self.stream_ids, "tx_fraud": self.holdout["tx_fraud"].to_numpy(),
                              "latency_ms": [(self.collector.seen[i].consumed_ns - p) / 1e6
                                             for i, p in zip(self.stream_ids, self.produced_ns)],
                              **{f"score_{k}": v for k, v in scores.items()}})
        path = self.run_dir / "report" / "events.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        return path

    def offline_metrics(self) -> dict:
        try:
            manifest = json.loads((self.offline_dir / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        steps = manifest.get("steps", {})
        out = {}
        for name in ("distill", "export", "evaluate"):
            m = steps.get(name, {}).get("metrics")
            if m:
                out[name] = m
        return out

    # ----- cleanup ---------------------------------------------------------------------------
    def cleanup(self) -> None:
        for c in self.collectors:
            with contextlib.suppress(Exception):
                c.stop()
        if self.o.keep_stack:
            alive = [s for s in self.services if s.alive]
            print(f"--keep-stack: the stack is still running (state in {self.run_dir})", file=self.out)
            for s in alive:
                print(f"  {s.name:<8} pid {s.pid}, log {s.log_path}", file=self.out)
                if self.stack is not None:  # recorded with the stack: `stack down` stops it too
                    with contextlib.suppress(Exception):
                        self.stack.adopt(s.name, s.pid, s.argv, s.log_path)
            print(f"stop everything with: {stop_command(getattr(self, 'config', None), self.run_dir)}",
                  file=self.out, flush=True)
            return
        for s in reversed(self.services):
            with contextlib.suppress(Exception):
                s.stop()
        if self.stack is not None:
            try:
                self.stack.down()
            except Exception as exc:  # noqa: BLE001 - reported, the demo result stands
                print(f"warning: stack down: {exc}", file=self.out, flush=True)
        print("cleaned up: services and stack stopped", file=self.out, flush=True)


def stop_command(config: Path | None, run_dir: Path) -> str:
    """The pasteable command that stops the kept stack and the services recorded with it."""
    python = shlex.quote(sys.executable)
    if config:
        return f"{python} -m relstream --config {shlex.quote(str(config))} stack down"
    return f"RELSTREAM__RUN_DIR={shlex.quote(str(run_dir))} {python} -m relstream stack down"


def wait_group_members(bootstrap: str, groups: Sequence[str], timeout_s: float,
                       check: Callable[[], None] | None = None) -> None:
    """Wait until each consumer group is stable with at least one member (the service is consuming)."""
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout_s
    pending = list(groups)
    while pending:
        if check is not None:
            check()
        futures = admin.describe_consumer_groups(pending, request_timeout=5)
        still = []
        for g, fut in futures.items():
            try:
                desc = fut.result(timeout=10)
                ok = len(desc.members) > 0 and str(desc.state).upper().endswith("STABLE") and any(
                    m.assignment.topic_partitions for m in desc.members)
            except Exception:  # noqa: BLE001 - group unknown yet
                ok = False
            if not ok:
                still.append(g)
        pending = still
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"consumer group(s) {pending} have no assigned member after {timeout_s:.0f}s")
        if pending:
            time.sleep(0.25)


SERVE_BANNER = re.compile(r"relstream serve: (http://\S+)")


def serve_address(serve: "Service", timeout_s: float, stage: str) -> str:
    """The address `relstream serve` printed on start (its real bound port), read from its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        serve.check_alive(stage)
        text = serve.log_path.read_text(errors="replace") if serve.log_path.exists() else ""
        found = SERVE_BANNER.findall(text)
        if found:
            return found[-1]  # the log is appended to: the last banner is this start's
        time.sleep(0.1)
    raise DemoError(stage, f"relstream serve printed no address within {timeout_s:.0f}s", serve.log_path,
                    serve.tail())


def wait_http(url: str, timeout_s: float, check: Callable[[], None] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s ({last})")


def parse_args(argv: Sequence[str] | None = None) -> DemoOptions:
    p = argparse.ArgumentParser(prog="relstream demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=os.environ.get("DEMO_RUN_DIR"),
                   help="where everything goes (default runs/demo-<UTC time>)")
    p.add_argument("--customers", type=int, default=int(os.environ.get("DEMO_CUSTOMERS", 300)))
    p.add_argument("--terminals", type=int, default=int(os.environ.get("DEMO_TERMINALS", 600)))
    p.add_argument("--days", type=int, default=int(os.environ.get("DEMO_DAYS", 60)))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=float(os.environ.get("DEMO_RATE", 200)),
                   help="events/s offered to Kafka while streaming (default 200)")
    p.add_argument("--holdout-day", type=int, help="day to stream (default: first day of the test period)")
    p.add_argument("--deep-epochs", type=int, default=2)
    p.add_argument("--distill-epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the offline stages")
    p.add_argument("--no-parity", action="store_true", help="skip the parity re-scoring")
    p.add_argument("--no-http", action="store_true", help="skip relstream serve + curl")
    p.add_argument("--keep-stack", action="store_true", default=os.environ.get("KEEP_STACK", "") not in ("", "0"),
                   help="leave the stack and services running (also KEEP_STACK=1)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir) if a.run_dir else REPO_ROOT / "runs" / time.strftime("demo-%Y%m%dT%H%M%SZ",
                                                                                    time.gmtime())
    return DemoOptions(run_dir=run_dir, customers=a.customers, terminals=a.terminals, days=a.days, seed=a.seed,
                       rate=a.rate, holdout_day=a.holdout_day, deep_epochs=a.deep_epochs,
                       distill_epochs=a.distill_epochs, keep_stack=a.keep_stack, parity=not a.no_parity,
                       http=not a.no_http, threads=a.threads)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    demo = Demo(opts)
    try:
        return demo.run()
    except DemoError as exc:
        print(f"\nrelstream demo: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nrelstream demo: interrupted (cleaned up)", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
