"""The demo's run state and its bring-up stages (1-8 of :mod:`relstream.demo.stages`): the stack, the
offline model, the backfill and the services, and the cleanup of everything they start."""
from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from offline.data.sources import load_tables
from offline.data.spec import load_project
from relstream.config import load_config, redis_client, serving_plan
from relstream.stack import LocalStack
from rti_store import Completeness, RedisWindowStore

from .events import ScoreCollector, create_topics, label_records, open_codec, wait_group_members
from .report import StageTiming
from .tools import (LABEL_PLAN, TX_FIELDS, DemoError, Service, latest_version_dir, load_model, relstream_argv, run_step,
                    stop_command, warm_up, write_service_config)



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
    label_feedback: bool = True  # plan fraud_labels: label events on their own topic are model inputs


@dataclass
class StageClock:
    timings: list = field(default_factory=list)
    total: int = 12
    out: Any = sys.stdout

    @contextlib.contextmanager
    def stage(self, name: str, what: str):

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



class BringUp:
    """The demo run's state and stages 1-8; every resource it starts is registered for cleanup."""

    MODEL_NAME = "relstream"
    TOPIC_TX = "relstream.transactions"
    TOPIC_SCORES = "relstream.scores"
    TOPIC_SCORES_REPLAY = "relstream.scores.replay"
    TOPIC_DLQ = "relstream.dlq"
    TOPIC_LABELS = "relstream.transaction-labels"
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
        self.labels_history: list[dict] = []
        self.labels_stream: list[dict] = []

    def say(self, text: str) -> None:
        print(f"        {text}", file=self.out, flush=True)

    def stage_stack(self) -> None:

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

    @property
    def spec(self) -> Path:
        return self.offline_dir / "project.yaml"  # written by `relstream offline dataset fraud`

    def offline(self, stage: str, *args: str, timeout_s: float = 1800) -> str:
        return run_step(stage, relstream_argv(None, "offline", *args, "--project", self.spec, "--run-dir",
                                              self.offline_dir, "--no-progress"),
                        self.logs / f"{stage}.log", timeout_s)

    def stage_generate(self) -> None:
        o = self.o
        with self.clock.stage("generate", f"simulating {o.customers} customers x {o.terminals} terminals x "
                                          f"{o.days} days") as d:
            run_step("generate", relstream_argv(None, "offline", "dataset", "fraud", "--out", self.offline_dir,
                                                "--customers", o.customers, "--terminals", o.terminals,
                                                "--days", o.days, "--seed", o.seed,
                                                "--plan", LABEL_PLAN if o.label_feedback else "fraud"),
                     self.logs / "generate.log", 1800)
            ds = load_tables(load_project(self.spec))
            self.tx = ds.table("transactions")
            d["text"] = f"{len(self.tx):,} transactions, fraud rate {self.tx['tx_fraud'].mean():.2%}"

    def stage_train_deep(self) -> None:
        with self.clock.stage("train-deep", f"temporal GNN, {self.o.deep_epochs} epochs, CPU") as d:
            self.offline("train-deep", "train-deep", "--epochs", self.o.deep_epochs, "--seed", self.o.seed,
                         "--threads", self.o.threads)
            d["text"] = str(self.offline_dir / "deep_model.pt")

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
            self.offline("export", "export", "--repo", self.stack.model_repository, "--model-name", self.MODEL_NAME,
                         timeout_s=900)
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
        if self.o.label_feedback:
            self.split_labels(lo, hi)
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
            if self.o.label_feedback:
                tail = run_step("backfill", relstream_argv(self.config, "ingest", "--backfill", self.labels_file,
                                                           "--backfill-table", self.label_table, "--no-progress"),
                                self.logs / "backfill-labels.log", 900)
                d["text"] += f"; {len(self.labels_history):,} labels known before the held-out day"

    @property
    def labels_file(self) -> Path:
        return self.run_dir / "labels-history.parquet"

    def split_labels(self, lo: int, hi: int) -> None:
        """The label events: one per transaction, known a delay after it (``label_rows``). Those
        known before the held-out day are backfilled (with their known time); those that become
        known during it are streamed with the transactions (without one: ingest applies the delay)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from offline.distillation.replay import label_rows
        from schemas.plan_loading import builtin_plan

        plan = builtin_plan(LABEL_PLAN)
        self.label_table = plan.label_feedback.table
        labels = label_rows(plan, self.tx)
        known = labels[plan.tables[self.label_table].time_column].to_numpy(np.int64)
        history = labels[known < lo]
        pq.write_table(pa.Table.from_pandas(history, preserve_index=False), self.labels_file)
        self.labels_history = label_records(history)
        self.labels_stream = label_records(labels[(known >= lo) & (known < hi)], known_times=False)
        self.data_info["labels"] = (f"{len(self.labels_history):,} label events backfilled, "
                                    f"{len(self.labels_stream):,} streamed (known during the held-out day)")

    def write_config(self) -> None:
        sources = [{"path": str(self.run_dir / "history.parquet")}]
        topics = {"facts": self.TOPIC_TX, "interactions": [self.TOPIC_TX], "scores": self.TOPIC_SCORES,
                  "dlq": self.TOPIC_DLQ}
        if self.o.label_feedback:
            sources.append({"path": str(self.labels_file), "table": self.label_table})
            topics["labels"] = self.TOPIC_LABELS
        self.config = write_service_config(
            self.run_dir / "relstream.yaml", self.stack, run_dir=self.run_dir, model_name=self.MODEL_NAME,
            topics=topics, registry_dir=self.registry_dir,
            # the history files are reloaded if the windows are ever rebuilt (docs/streams.md)
            ingest={"group_id": "demo-ingest", "batch_timeout_s": 0.02, "backfill_sources": sources},
            score={"group_id": "demo-scorer", "transactional_id": "demo-scorer-0", "append_scored": True},
            serve={"port": 0}, plan=LABEL_PLAN if self.o.label_feedback else None)

    def start_service(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Service:
        svc = Service(name, relstream_argv(self.config, *args), self.logs / f"{name}.log", env).start()
        self.services.append(svc)
        return svc

    def stage_services(self) -> None:
        with self.clock.stage("services", "relstream ingest + relstream score") as d:
            create_topics(self.stack.kafka_bootstrap, [self.TOPIC_TX, self.TOPIC_SCORES, self.TOPIC_SCORES_REPLAY,
                                                       self.TOPIC_DLQ, *self.label_topics])
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

    @property
    def label_topics(self) -> list[str]:
        return [self.TOPIC_LABELS] if self.o.label_feedback else []

    def wait_windows_complete(self, timeout_s: float, check: Callable[[], Any]) -> float:

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
