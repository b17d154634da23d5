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

Stages 1-8 are in :mod:`relstream.demo.bringup`, 9-12 and the command line here; their tools in
:mod:`relstream.demo.tools` (services, commands, the model in Triton), :mod:`relstream.demo.events`
(Kafka), :mod:`relstream.demo.reference` (the offline side of parity) and :mod:`relstream.demo.report`
(the summary, report and plots).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bringup import BringUp, DemoOptions
from .events import RateProducer, ScoreCollector, open_codec, transaction_records, wait_caught_up
from .reference import event_time_reference_scores, offline_reference_scores
from .report import (CurlCall, StreamMeasurement, curl_command, format_summary, parity_of, summarise, token_export,
                     write_report)
from .tools import LABEL_SUBJECT, PARITY_TOLERANCE, REPO_ROOT, TOKEN_ENV, DemoError, serve_address, wait_http



class Demo(BringUp):
    """The demo run: the bring-up stages (:class:`~relstream.demo.bringup.BringUp`), then the
    traffic through the running services (stream, parity, http) and the report."""

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
