"""The scorers built from the configuration: real clients for `relstream score` and `relstream serve`.

The scorer package takes its clients injected (tests hand it real servers explicitly); this
module is where the app turns the configuration (``relstream.config``) and the typed ``score`` /
``serve`` sections (``scorer.settings``) into those clients, including per-entity model routing
(``relstream.model_routing``) whenever no model version is pinned, for scoring and ranking plans
alike.
"""
from __future__ import annotations

import os
import signal

from confluent_kafka import Consumer, Producer

from rti_store import RedisWindowStore
from schemas.registry import AvroCodec, FileSchemaRegistry, load_builtin_schemas
from scorer.fallbacks import WindowFallback
from scorer.http import ServeDeps, create_app
from scorer.kafka_service import KafkaScorer
from scorer.metrics import ScorerMetrics
from scorer.recommend import SyncRanker, with_catalog
from scorer.recommend_kafka import RankingStrategy, ranking_catalog
from scorer.settings import ScoreSettings, ServeSettings
from scorer.triton import AsyncTritonScorer, TritonScorer

from .config import Config, kafka_client_config, load_config, redis_client, section, serving_plan, triton_grpc_url
from .errors import CliError
from .model_routing import routed


def build_kafka_scorer(cfg: Config, settings: ScoreSettings, *, metrics: ScorerMetrics | None = None) -> KafkaScorer:
    """A KafkaScorer with real clients from the relstream config and the `score` section; for a
    ranking plan, the session-events -> ranked-lists service (scorer/recommend_kafka.py)."""
    plan = serving_plan(cfg, settings.plan)
    registry = FileSchemaRegistry(settings.registry_dir or f"{cfg.run_dir}/schema-registry")
    load_builtin_schemas(registry)
    codec = AvroCodec(registry)
    encoder = AvroCodec(registry, validate=False)
    deadline = settings.window_deadline_ms / 1000
    store = RedisWindowStore(plan, redis_client(cfg, socket_timeout=deadline, socket_connect_timeout=deadline))
    # metadata.recovery.strategy=none: with librdkafka 2.16's default (rebootstrap), a restart of the
    # broker(s) decommissions the known brokers, and requests to the group coordinator then hang
    # forever (send_offsets_to_transaction included, whatever its timeout; librdkafka #5511)
    consumer_conf = {"metadata.recovery.strategy": "none", "group.id": settings.group_id, "enable.auto.commit": False,
                     "enable.auto.offset.store": False, "isolation.level": "read_committed",
                     "auto.offset.reset": settings.auto_offset_reset, "session.timeout.ms": 10000,
                     "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 100}
    if settings.static_membership:
        consumer_conf["group.instance.id"] = settings.transactional_id
    # ranking plans: catalog and strategy first, so a missing catalog fails before any client exists
    strategy = None
    scores_topic = settings.scores_topic or cfg.topics.scores
    if plan.is_ranking:
        rs = settings.recommend
        strategy = RankingStrategy(plan, ranking_catalog(cfg, settings, rs), rs)
        scores_topic = settings.scores_topic or rs.topic
    consumer = Consumer(kafka_client_config(cfg, **{**consumer_conf, **settings.consumer}))
    # retry.backoff.ms 10 (librdkafka: 100): a transaction begun while the broker still writes the
    # previous one's markers is refused with CONCURRENT_TRANSACTIONS and retried after this backoff;
    # at 100 ms every such retry was a 100 ms stall of the pipeline (it grows exponentially up to
    # retry.backoff.max.ms when a broker is really away)
    # at_least_once: no transaction, an idempotent producer (retries write no duplicates)
    delivery_conf = {"transactional.id": settings.transactional_id,
                     "transaction.timeout.ms": settings.transaction_timeout_ms} \
        if settings.delivery == "exactly_once" else {"enable.idempotence": True, "acks": "all"}
    producer = Producer(kafka_client_config(
        cfg, **{"metadata.recovery.strategy": "none", "linger.ms": 1, "retry.backoff.ms": 10, **delivery_conf,
                **settings.producer}))
    client = SyncRanker if plan.is_ranking else TritonScorer  # ranking: per-candidate outputs
    triton = client(plan, triton_grpc_url(cfg, settings.triton_grpc_url),
                    settings.model_name or cfg.triton.model_name, settings.model_version,
                    timeout_s=settings.triton_timeout_s)
    if not settings.model_version:  # no pinned version: per-entity routing (relstream model deploy)
        triton = routed(triton, plan, cfg)
    fallback = WindowFallback(plan, store, deadline_s=deadline, cooldown_s=settings.window_cooldown_ms / 1000)
    return KafkaScorer(plan, consumer=consumer, producer=producer, codec=codec, triton=triton, fallback=fallback,
                       facts_topics=settings.facts_topics or [cfg.topics.facts], scores_topic=scores_topic,
                       dlq_topic=settings.dlq_topic or cfg.topics.dlq, store=store,
                       append_scored=settings.append_scored, max_batch=settings.max_batch,
                       poll_timeout_s=settings.poll_timeout_ms / 1000, key_column=settings.key_column,
                       metrics=metrics, backoff_s=settings.retry_backoff_ms / 1000,
                       backoff_max_s=settings.retry_backoff_max_ms / 1000,
                       txn_timeout_s=min(30.0, settings.transaction_timeout_ms / 1000), encoder=encoder,
                       commit_interval_s=settings.commit_interval_ms / 1000,
                       commit_interval_max_s=None if settings.commit_interval_max_ms is None
                       else settings.commit_interval_max_ms / 1000, commit_busy_rate=settings.commit_busy_rate,
                       delivery=settings.delivery,
                       batch_interval_s=settings.batch_interval_ms / 1000, group_id=settings.group_id,
                       max_payload_bytes=settings.max_payload_bytes, strategy=strategy)


def install_signal_handlers(scorer: KafkaScorer) -> None:
    """SIGTERM / SIGINT: finish the batch in hand, commit it, stop."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: scorer.request_stop())


def api_token(settings: ServeSettings) -> str | None:
    token = os.environ.get(settings.token_env) or None
    if settings.auth and not token:
        raise CliError(f"no API token: set ${settings.token_env} (or run with --no-auth for local tests)")
    return token


def build_serve_app(cfg: Config, settings: ServeSettings):
    """The FastAPI app with real clients (Redis window store, Triton gRPC aio)."""
    plan = serving_plan(cfg, settings.plan)
    token = api_token(settings)
    # The deadline is enforced around the read; the socket timeout only frees a stuck thread.
    socket_timeout = max(0.25, 4 * settings.window_deadline_ms / 1000)
    client = redis_client(cfg, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
    store = RedisWindowStore(plan, client)
    triton = AsyncTritonScorer(plan, triton_grpc_url(cfg, settings.triton_grpc_url),
                               settings.model_name or cfg.triton.model_name, settings.model_version,
                               timeout_s=settings.triton_timeout_s)
    if not settings.model_version:  # no pinned version: per-entity routing (relstream model deploy)
        triton = routed(triton, plan, cfg)
    if plan.is_ranking:  # /v1/recommend's "from_catalog_top": the served version's catalog.parquet
        settings = with_catalog(cfg, settings)
    deps = ServeDeps(plan=plan, triton=triton, store=store, settings=settings, token=token,
                     store_ping=client.ping, on_close=[triton.close, store.close, client.close])
    return create_app(deps)


def serve_app_factory():
    """uvicorn factory (``relstream.serving:serve_app_factory``): config from $RELSTREAM_CONFIG + env."""
    cfg = load_config()
    return build_serve_app(cfg, section(cfg, "serve", ServeSettings))
