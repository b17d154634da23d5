"""Run the real relstream services (`ingest`, `score`, `serve`) as subprocesses on the test stack.

Each service is `python -m relstream <command>` with a config file pointing at the session
stack, its own log file, and a PID the test stops (SIGTERM, or SIGKILL for fault tests).
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from relstream.stack import free_port
from relstream.stack.process import Process
from schemas.plan_loading import PLANS_DIR

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceConfig:
    """A relstream.yaml for one test: unique topics, the stack's servers, the fraud plan."""

    stack: object
    dir: Path
    model_name: str = "relstream"
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def topics(self) -> dict[str, str]:
        # fraud: the transactions are the facts *and* the interactions of the windows
        return {"facts": f"ops-tx-{self.tag}", "interactions": f"ops-tx-{self.tag}",
                "scores": f"ops-scores-{self.tag}", "dlq": f"ops-dlq-{self.tag}"}

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    def write(self, **sections) -> Path:
        t = self.topics
        cfg = {
            "run_dir": str(self.run_dir),
            "plan": str(PLANS_DIR / "fraud.yaml"),
            "kafka": {"bootstrap_servers": self.stack.kafka_bootstrap},
            "redis": {"url": self.stack.redis_url},
            "triton": {"url": self.stack.triton_http_url, "model_name": self.model_name},
            "stack": {"model_repository": str(self.stack.model_repository)},
            "topics": {"facts": t["facts"], "interactions": [t["interactions"]], "scores": t["scores"],
                       "dlq": t["dlq"]},
            "ingest": {"group_id": f"ops-ingest-{self.tag}", "batch_timeout_s": 0.05,
                       "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}},
            "score": {"group_id": f"ops-score-{self.tag}", "triton_grpc_url": self.stack.triton_grpc_url,
                      "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
                      "static_membership": False},
            "serve": {"triton_grpc_url": self.stack.triton_grpc_url},
        }
        for name, extra in sections.items():
            cfg.setdefault(name, {}).update(extra)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"relstream-{self.tag}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path


class Service:
    """One `relstream ...` subprocess, run by the one process wrapper
    (:class:`relstream.stack.process.Process`); stop() / kill() end exactly its process group."""

    def __init__(self, name: str, argv: list[str], config: Path, log_dir: Path, env: dict | None = None,
                 python: str | Path = sys.executable):
        self.name = name
        self.log = log_dir / f"{name}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RELSTREAM")}
        clean.update({"RELSTREAM_CONFIG": str(config), "PYTHONPATH": str(ROOT), **(env or {})})
        self.process = Process(name, [str(python), "-m", "relstream", *argv], self.log, env=clean, cwd=ROOT).start()
        self.proc = self.process.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.process.alive

    def tail(self, n: int = 40) -> str:
        return self.process.tail(n)

    def wait_http(self, url: str, timeout: float = 60.0) -> str:
        return self.process.wait_http(url, timeout)

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        self.process.wait_for_log(text, timeout)

    def kill(self) -> None:
        """SIGKILL: no drain, no commit (a crash)."""
        self.process.kill(timeout_s=30)

    def stop(self, timeout: float = 40.0) -> int:
        return self.process.stop(timeout)


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def start_ingest(config: Path, log_dir: Path, name: str = "ingest", metrics_port: int | None = None) -> tuple[Service, int]:
    port = metrics_port or free_port()
    return Service(name, ["ingest", "--metrics-port", str(port)], config, log_dir), port


def start_score(config: Path, log_dir: Path, name: str = "score", txn_id: str | None = None,
                metrics_port: int | None = None) -> tuple[Service, int]:
    port = metrics_port or free_port()
    argv = ["score", "--metrics-port", str(port), "--transactional-id", txn_id or f"ops-{name}-{uuid.uuid4().hex[:6]}"]
    return Service(name, argv, config, log_dir), port


def start_serve(config: Path, log_dir: Path, name: str = "serve",
                python: str | Path = sys.executable) -> tuple[Service, int]:
    port = free_port()
    return Service(name, ["serve", "--no-auth", "--port", str(port), "--host", "127.0.0.1"], config, log_dir,
                   python=python), port


def codec_for(cfg: ServiceConfig):
    """The Avro codec on the services' file schema registry (<run_dir>/schema-registry)."""
    from schemas.registry import AvroCodec, FileSchemaRegistry, load_builtin_schemas
    registry = FileSchemaRegistry(cfg.run_dir / "schema-registry")
    load_builtin_schemas(registry)
    return AvroCodec(registry)


def produce_transactions(bootstrap: str, topic: str, codec, rows) -> None:
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for r in rows:
        producer.produce(topic, key=str(r["customer_id"]).encode(), value=codec.encode("transactions-value", r))
        producer.poll(0)
    assert producer.flush(30) == 0


def transaction_rows(n: int, t0_ns: int, customers: int = 50, terminals: int = 20, start_id: int = 0) -> list[dict]:
    return [{"transaction_id": start_id + i, "tx_datetime": t0_ns + i * 1_000_000_000,
             "customer_id": (start_id + i) % customers, "terminal_id": (start_id + i) % terminals,
             "tx_amount": float(10 + (i % 90))} for i in range(n)]


def create_topics(bootstrap: str, names, partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                                   for n in dict.fromkeys(names)], operation_timeout=30)
    for fut in futures.values():
        fut.result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        if all(n in md.topics and len(md.topics[n].partitions) == partitions
               and all(p.leader >= 0 for p in md.topics[n].partitions.values()) for n in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {names} not ready")


def read_topic(bootstrap: str, topic: str, want: int, timeout: float = 60.0, committed: bool = True) -> list:
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ops-read-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed" if committed else "read_uncommitted"})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and time.monotonic() < deadline:
            for msg in c.consume(500, 0.2):
                if msg.error() is None:
                    got.append(msg)
    finally:
        c.close()
    return got
