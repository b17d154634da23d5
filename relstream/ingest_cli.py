"""`relstream ingest`: registered into the relstream CLI by ``register(subparsers)``."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from schemas.plan import PlanError
from scorer.settings import ScoreSettings
from streams.settings import IngestSection

from .config import config_from_args, kafka_client_config, redis_client, section, serving_plan
from .errors import CliError
from .overrides import Flag, add_flags, apply_flags

DESCRIPTION = """\
Consume the interaction topics and keep the real-time windows of every hop of the serving plan
in Redis. Records are decoded with the Avro codec (Confluent wire format), turned into window
appends, written in one Redis round trip per batch, and their offsets committed only after
Redis acknowledged them (at-least-once delivery + idempotent appends = each event exactly once
in its windows). Bad records go to the dead-letter topic with the reason and source offset.
SIGTERM finishes the batch in hand, commits it and exits.

With --backfill FILE.parquet, fill the windows from a parquet file of the plan's table instead
(same append path), then exit.

A bad record of a topic that `relstream score` also consumes (score.facts_topics, default
topics.facts) is dead-lettered by the scorer only; ingest skips it and counts it
(relstream_ingest_dlq_skipped_total). `ingest.dead_letters: all` makes ingest dead-letter every
bad record it reads (deployments without `relstream score`).

Settings: the config file's `ingest` section (topics, group_id, batch_size, batch_timeout_s,
max_payload_bytes, dead_letters, metrics_port, metrics_addr, registry, store, consumer,
producer); flags override it. See docs/streams.md."""


INGEST_FLAGS = (
    Flag("group_id", "--group", "consumer group id", "ID"),
    Flag("registry", "--registry", "file schema registry (default: <run_dir>/schema-registry)", "DIR"),
    Flag("batch_size", "--batch-size", "records per batch / Redis round trip", "N"),
    Flag("batch_timeout_s", "--batch-timeout", "max seconds to wait for a batch to fill", "S"),
    Flag("max_payload_bytes", "--max-payload-bytes", "larger records are dead-lettered", "B"),
    Flag("metrics_port", "--metrics-port", "serve Prometheus /metrics on this port", "PORT"),
    Flag("metrics_addr", "--metrics-addr", "address of the metrics endpoint", "ADDR"))


def register(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="Kafka -> Redis window ingestion (or --backfill a parquet file)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", metavar="NAME|PATH", help="serving plan: built-in name or YAML path "
                   "(default: config `plan`, else the built-in 'fraud')")
    p.add_argument("--topic", action="append", metavar="TOPIC[=TABLE]",
                   help="topic to consume and the plan table its records belong to (repeatable; "
                        "default: config ingest.topics, else topics.interactions -> the plan's interaction table "
                        "and, with label feedback, topics.labels -> its label table)")
    p.add_argument("--dlq-topic", metavar="TOPIC", help="dead-letter topic (default: topics.dlq)")
    add_flags(p, "ingest", IngestSection, INGEST_FLAGS)
    p.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra librdkafka setting for the consumer (repeatable)")
    p.add_argument("--exit-when-idle", type=float, metavar="S",
                   help="exit after S seconds without records (drains, for jobs and tests)")
    p.add_argument("--backfill", metavar="FILE.parquet", help="fill the windows from this file, then exit")
    p.add_argument("--backfill-table", metavar="TABLE", help="plan table of the file (default: the fact table)")
    p.add_argument("--chunk-rows", type=int, default=20_000, metavar="N", help="rows per store append in backfill")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_ingest)


def parse_kv(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--kafka-config: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _read_published_transactions(path: Path):
    """A transactions file in the fraud simulator's published schema, as the plan's table."""
    # pandas and the data-set loader load only for a backfill in this layout
    from offline.datasets.fraud import normalise
    from offline.datasets.loader import read_transactions_file, validate_transactions
    return normalise(validate_transactions(read_transactions_file(path))).table("transactions")


def published_formats():
    """The published layouts `ingest --backfill` also reads (``TRANSACTION_ID, TX_DATETIME, ...``)."""
    from streams.backfill import SourceFormat
    return (SourceFormat("published simulator schema", "transactions", "TRANSACTION_ID",
                         _read_published_transactions),)


def cmd_ingest(args) -> int:
    # Kafka, Redis and Avro clients load when the command runs, not when the CLI builds its
    # parser (every `relstream` command builds every command's parser)
    from streams.backfill import BackfillError, backfill, row_decoder
    from streams.ingest import (IngestService, IngestSettings, default_topics, open_codec, open_redis_store,
                                scorer_owned_topics)
    from streams.records import parse_topic_tables

    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_from_args(args)
    sec, _ = apply_flags(section(cfg, "ingest", IngestSection), args, INGEST_FLAGS)
    try:
        plan = serving_plan(cfg, args.plan)
    except PlanError as exc:
        raise CliError(f"--plan: {exc}") from None
    store = open_redis_store(plan, redis_client(cfg), sec.store)

    if args.backfill:
        decoder = row_decoder(plan)
        try:
            report = backfill(args.backfill, decoder, store, table=args.backfill_table,
                              chunk_rows=args.chunk_rows, progress=not args.no_progress,
                              formats=published_formats())
        except BackfillError as exc:
            raise CliError(str(exc)) from None
        print(json.dumps(report.to_dict()))
        return 0

    # SIGTERM/SIGINT: finish the batch in hand, commit, close. Installed before the clients
    # exist, so a signal during start-up also ends cleanly (nothing consumed, nothing to commit).
    signalled: list[int] = []
    running: list = []

    def on_signal(signum, _frame):
        signalled.append(signum)
        for svc in running:
            svc.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        topics = (parse_topic_tables(args.topic) if args.topic else dict(sec.topics)
                  or default_topics(plan, list(cfg.topics.interactions), cfg.topics.labels))
        # the scorer's topics and size limit as `relstream score` resolves them (scorer/settings.py)
        score = section(cfg, "score", ScoreSettings)
        skip = scorer_owned_topics(topics, sec.dead_letters, score.facts_topics or [cfg.topics.facts],
                                   sec.max_payload_bytes, score.max_payload_bytes)
        settings = IngestSettings(
            topics=topics, dlq_topic=args.dlq_topic or cfg.topics.dlq,
            group_id=sec.group_id, batch_size=sec.batch_size, batch_timeout_s=sec.batch_timeout_s,
            max_payload_bytes=sec.max_payload_bytes, skip_dead_letters_on=skip,
            shutdown_grace_s=sec.shutdown_grace_s,
            state_check_interval_s=sec.state_check_interval_s,
            backfill_sources=tuple((str(s.path), s.table) for s in sec.backfill_sources),
            metrics_port=sec.metrics_port, metrics_addr=sec.metrics_addr)
        registry = sec.registry or Path(cfg.run_dir) / "schema-registry"
        codec, decode_errors = open_codec(registry, settings.max_payload_bytes)
        consumer_extra = {**sec.consumer, **parse_kv(args.kafka_config)}
        service = IngestService(plan, settings, kafka_client_config(cfg), store, codec, decode_errors,
                                consumer_extra=consumer_extra, producer_extra=dict(sec.producer))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    running.append(service)
    if signalled:
        print("relstream ingest: stopped during start-up", file=sys.stderr)
        service.close()
        return 0
    port = service.start_metrics()
    print(f"relstream ingest: group {settings.group_id}, topics {topics}, DLQ {settings.dlq_topic}, "
          f"plan {plan.name}" + (f", metrics on port {port} (/metrics)" if port else ""),
          file=sys.stderr, flush=True)
    if skip:
        print(f"relstream ingest: bad records of {sorted(skip)} are dead-lettered by relstream score, not here "
              f"(ingest.dead_letters: owned); counted in relstream_ingest_dlq_skipped_total", file=sys.stderr, flush=True)
    stats = service.run(idle_exit_s=args.exit_when_idle, install_signals=False)
    print(json.dumps({"batches": stats.batches, "records": stats.records, "interactions": stats.interactions,
                      "dead_letters": stats.dead_letters, "dead_letters_skipped": stats.dead_letters_skipped,
                      "commits": stats.commits,
                      "commit_failures": stats.commit_failures, "store_retries": stats.store_retries}),
          flush=True)
    return 0
