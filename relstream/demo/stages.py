"""`make demo`: the whole system on one box, from generated data to streamed scores.

    python3 -m relstream.demo [--customers 300 --terminals 600 --days 60] [--rate 200] [--keep-stack]

Stages (each prints its progress and timing; a failure names the stage and shows the log tail):

 1. stack       Kafka (KRaft), Redis, Triton on free 127.0.0.1 ports, state under RUN/stack
 2. generate    fraud transactions (`relstream offline generate`)
 3. train-deep  the temporal GNN (`relstream offline train-deep`)
 4. embed       daily embeddings of every customer/terminal (`relstream offline embed`)
 5. distill     point-in-time distillation rows + the shallow model (`relstream offline distill`)
 6. export      Triton model repository, loaded into the running Triton (`relstream offline export`)
 7. backfill    windows from the history before the held-out day (`relstream ingest --backfill`), and
                the labels known by then (plan `fraud_labels`: known labels are model inputs)
 8. services    `relstream ingest` and `relstream score` as subprocesses
 9. stream      the held-out day produced to Kafka at a fixed rate, with the label events that become
                known that day (transactions of a week before: the plan's feedback delay); every
                score consumed
10. parity      the same events re-scored from caught-up windows vs the offline model on
                offline-built tensors (max abs diff <= 1e-5)
11. http        `relstream serve` and one real curl call
12. report      RUN/report/report.md + latency/ROC/PR plots

The stages are here; their tools in :mod:`relstream.demo.tools` (services, commands, the model in
Triton), :mod:`relstream.demo.events` (Kafka), :mod:`relstream.demo.reference` (the offline side of
parity) and :mod:`relstream.demo.report` (the summary, report and plots).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from offline.data.sources import load_tables
from offline.data.spec import load_project
from relstream.config import load_config, redis_client, serving_plan
from relstream.stack import LocalStack
from rti_store import Completeness, RedisWindowStore

from .events import (RateProducer, ScoreCollector, create_topics, label_records, open_codec, transaction_records,
                     wait_caught_up, wait_group_members)
from .reference import event_time_reference_scores, offline_reference_scores
from .report import (CurlCall, StageTiming, StreamMeasurement, curl_command, format_summary, parity_of, summarise,
                     token_export, write_report)
from .tools import (LABEL_PLAN, LABEL_SUBJECT, PARITY_TOLERANCE, REPO_ROOT, TOKEN_ENV, TX_FIELDS, DemoError, Service,
                    latest_version_dir,
                    load_model, relstream_argv, run_step, serve_address, stop_command, wait_http, warm_up,
                    write_service_config)


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


class Demo:
    """The demo run; every resource it starts is registered for cleanup."""

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

    # ----- stages ----------------------------------------------------------------------------
    def run(self) -> int:

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

    def stage_stream(self):

        n = len(self.holdout)
        with self.clock.stage("stream", f"{n:,} held-out transactions at {self.o.rate:g}/s through Kafka") as d:
            records = transaction_records(self.holdout)
            ids = [str(r["transaction_id"]) for r in records]
            self.data_info["load_avg_at_stream"] = round(os.getloadavg()[0], 1)  # 2 shared cores: context
            producer = RateProducer(self.stack.kafka_bootstrap, open_codec(self.registry_dir))
            labels = self.stream_labels(n) if self.labels_stream else None
            t0 = time.monotonic()
            produced = producer.produce(self.TOPIC_TX, records, rate=self.o.rate)
            producer.flush()
            if labels is not None:
                labels.join()
                if labels.error:
                    raise DemoError("stream", f"label events: {labels.error}")
                self.say(f"produced {len(self.labels_stream):,} label events to {self.TOPIC_LABELS}")
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

    def stream_labels(self, n_tx: int) -> "threading.Thread":
        """The day's label events on their own topic, alongside the transactions and spread over
        the same time (a background producer at the proportional rate)."""
        import threading

        class Labels(threading.Thread):
            error: str | None = None

            def run(inner) -> None:
                try:
                    p = RateProducer(self.stack.kafka_bootstrap, open_codec(self.registry_dir))
                    rate = self.o.rate * len(self.labels_stream) / max(n_tx, 1) if self.o.rate else None
                    p.produce(self.TOPIC_LABELS, self.labels_stream, rate=rate, subject=LABEL_SUBJECT)
                    p.flush()
                except Exception as exc:  # noqa: BLE001 - reported by the stream stage
                    inner.error = f"{type(exc).__name__}: {exc}"

        t = Labels(daemon=True)
        t.start()
        return t

    def stage_parity(self):

        with self.clock.stage("parity", "re-score from caught-up windows vs the offline model") as d:
            # 1. the windows hold every streamed event once ingest committed them all
            waited = wait_caught_up(self.stack.kafka_bootstrap, "demo-ingest", [self.TOPIC_TX, *self.label_topics], 120,
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
            window_records: Any = transaction_records(self.history) + self.stream_records
            if self.o.label_feedback:  # the label events as ingest got them (known time or not)
                window_records = {"transactions": window_records,
                                  self.label_table: self.labels_history + self.labels_stream}
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
        for name in ("distill", "export", "quality"):
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
    p.add_argument("--no-label-feedback", action="store_true",
                   help="serve the plain fraud plan (no label events, no known-label inputs)")
    p.add_argument("--no-http", action="store_true", help="skip relstream serve + curl")
    p.add_argument("--keep-stack", action="store_true", default=os.environ.get("KEEP_STACK", "") not in ("", "0"),
                   help="leave the stack and services running (also KEEP_STACK=1)")
    a = p.parse_args(argv)
    run_dir = Path(a.run_dir) if a.run_dir else REPO_ROOT / "runs" / time.strftime("demo-%Y%m%dT%H%M%SZ",
                                                                                    time.gmtime())
    return DemoOptions(run_dir=run_dir, customers=a.customers, terminals=a.terminals, days=a.days, seed=a.seed,
                       rate=a.rate, holdout_day=a.holdout_day, deep_epochs=a.deep_epochs,
                       distill_epochs=a.distill_epochs, keep_stack=a.keep_stack, parity=not a.no_parity,
                       http=not a.no_http, threads=a.threads, label_feedback=not a.no_label_feedback)


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
