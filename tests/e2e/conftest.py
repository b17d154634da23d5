"""End-to-end fixtures: a small fraud dataset, an exported model loaded in the session Triton, and
per-test environments (own topics, Redis database, schema registry and relstream config) in which
the real `relstream ingest` / `relstream score` / `relstream serve` run as subprocesses."""
from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from relstream.demo.events import create_topics, open_codec, transaction_records
from relstream.demo.tools import Service, load_model, relstream_argv, run_step, write_service_config

E2E_MODEL = "e2e_model"
_redis_dbs = itertools.count()


@pytest.fixture(scope="session")
def plan():
    from schemas.plan_loading import builtin_plan
    return builtin_plan("fraud")


@pytest.fixture(scope="session")
def fraud_tx():
    """~3,000 generated transactions over 21 days (normalised plan columns, time-ordered)."""
    from offline.datasets.fraud import FraudSimConfig, generate_dataset
    cfg = FraudSimConfig(n_customers=60, n_terminals=120, n_days=21, radius=15.0, seed=7,
                         compromised_terminals_per_day=1, compromised_customers_per_day=1)
    return generate_dataset(cfg).table("transactions")


def day_bounds(tx, day: int) -> int:
    from offline.datasets.base import NS_PER_DAY
    t0 = int(tx["tx_datetime"].min())
    return t0 - t0 % NS_PER_DAY + day * NS_PER_DAY


@pytest.fixture(scope="session")
def e2e_model(stack, plan, fraud_tx, tmp_path_factory):
    """An (untrained) export of the fraud plan with random daily embeddings for ~80 % of the
    entities (the rest take the cold-start path), loaded in the session Triton."""
    from offline.embeddings import random_embeddings, write_embeddings_parquet
    from offline.export import export_untrained
    from relstream.demo.tools import latest_version_dir

    rng = np.random.default_rng(0)
    customers = np.unique(fraud_tx["customer_id"].to_numpy())
    terminals = np.unique(fraud_tx["terminal_id"].to_numpy())
    keep = {"customers": customers[rng.random(len(customers)) < 0.8],
            "terminals": terminals[rng.random(len(terminals)) < 0.8]}
    snapshots = [day_bounds(fraud_tx, d) for d in range(1, 23)]
    path = tmp_path_factory.mktemp("e2e-emb") / "embeddings.parquet"
    write_embeddings_parquet(path, *random_embeddings(plan, keep, snapshots, dim=8, seed=1))
    export_untrained(plan, stack.model_repository, model_name=E2E_MODEL, embeddings=path, seed=3)
    load_model(stack.triton_http_url, E2E_MODEL)
    return latest_version_dir(stack.model_repository, E2E_MODEL)


class E2E:
    """One test's world: unique topics, its own Redis DB and registry, services as subprocesses."""

    def __init__(self, stack, root: Path, model_name: str = E2E_MODEL, partitions: int = 2,
                 plan: str | None = None):
        self.stack = stack
        self.root = root
        self.tag = uuid.uuid4().hex[:8]
        self.plan = plan  # a built-in plan name for the services (default: the config's default)
        self.topics = {"facts": f"e2e.facts.{self.tag}", "interactions": [f"e2e.tx.{self.tag}"],
                       "scores": f"e2e.scores.{self.tag}", "dlq": f"e2e.dlq.{self.tag}",
                       "labels": f"e2e.labels.{self.tag}"}
        self.tx_topic = self.topics["interactions"][0]
        self.redis_db = 1 + next(_redis_dbs) % 15  # DB 0 belongs to the shared `redis_client` fixture
        self.registry = root / "registry"
        self.codec = open_codec(self.registry)
        self.ingest_group = f"e2e-ingest-{self.tag}"
        self.score_group = f"e2e-score-{self.tag}"
        self.model_name = model_name
        self.services: list[Service] = []
        create_topics(stack.kafka_bootstrap, [self.topics["facts"], self.tx_topic, self.topics["scores"],
                                              self.topics["dlq"]] + ([self.topics["labels"]] if plan else []),
                      partitions=partitions)
        self.redis().flushdb()
        self.config = self.write_config()

    def write_config(self, **sections) -> Path:
        return write_service_config(
            self.root / "relstream.yaml", self.stack, run_dir=self.root, model_name=self.model_name,
            topics=self.topics, registry_dir=self.registry, redis_db=self.redis_db,
            ingest={"group_id": self.ingest_group, "batch_timeout_s": 0.02,
                    "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
                    **sections.get("ingest", {})},
            score={"group_id": self.score_group, "transactional_id": f"e2e-score-{self.tag}", "max_batch": 64,
                   **sections.get("score", {})},
            serve=sections.get("serve", {}), plan=self.plan)

    def redis(self):
        import redis
        return redis.Redis.from_url(f"redis://127.0.0.1:{self.stack.ports['redis']}/{self.redis_db}")

    def service(self, name: str, *args: str, env: dict | None = None) -> Service:
        svc = Service(name, relstream_argv(self.config, *args), self.root / "logs" / f"{name}-{len(self.services)}.log",
                      env)
        self.services.append(svc)
        return svc.start()

    def backfill(self, frame, table: str | None = None) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq
        path = self.root / f"backfill-{uuid.uuid4().hex[:6]}.parquet"
        if table is None:
            frame = frame[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]]
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
        extra = ("--backfill-table", table) if table else ()
        return run_step("backfill", relstream_argv(self.config, "ingest", "--backfill", path, *extra, "--no-progress"),
                        self.root / "logs" / "backfill.log", 300)

    def close(self) -> None:
        for s in reversed(self.services):
            s.stop(10)
        left = [s.name for s in self.services if s.alive]
        assert not left, f"services still running: {left}"


@pytest.fixture
def e2e(stack, tmp_path, e2e_model):
    env = E2E(stack, tmp_path)
    yield env
    env.close()


def records_of(frame) -> list[dict]:
    return transaction_records(frame)


def timed(label: str, t0: float) -> float:
    took = time.monotonic() - t0
    print(f"[e2e] {label}: {took:.1f}s", flush=True)
    return took
