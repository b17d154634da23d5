"""`relstream score` (Kafka path) and `relstream serve` (HTTP path).

Settings come from the `score` / `serve` sections of the relstream config (see
:mod:`scorer.settings`); command-line flags override them. The clients are built by
:mod:`relstream.serving`.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from prometheus_client import start_http_server

from scorer.metrics import ScorerMetrics
from scorer.settings import ScoreSettings, ServeSettings

from .config import config_from_args, section, serving_plan
from .overrides import Flag, add_flags, apply_flags

log = logging.getLogger("relstream.score")

PLAN_FLAG = Flag("plan", "--plan", "serving plan YAML or built-in name (default: the top-level plan, "
                 "then the built-in fraud plan)", "NAME|PATH")
MODEL_FLAGS = (Flag("model_name", "--model", "Triton model name (default: triton.model_name)"),
               Flag("triton_grpc_url", "--triton-grpc", "Triton gRPC host:port"))
SCORE_FLAGS = (PLAN_FLAG, Flag("group_id", "--group", "consumer group id"),
               Flag("transactional_id", "--transactional-id", "unique per running instance"),
               Flag("max_batch", "--max-batch", "events per batch"),
               Flag("append_scored", "--append-scored", "also append each scored fact to its windows"),
               *MODEL_FLAGS)
SERVE_FLAGS = (PLAN_FLAG, Flag("host", "--host", "bind address"), Flag("port", "--port", "port"),
               Flag("workers", "--workers", "uvicorn worker processes"), *MODEL_FLAGS,
               Flag("batch_window_ms", "--batch-window-ms", "micro-batch collection window"),
               Flag("max_batch", "--max-batch", "requests per micro-batch"),
               Flag("window_deadline_ms", "--window-deadline-ms", "window-store deadline"),
               Flag("auth", "--no-auth", "accept requests without a token (local only)", const=False))


def register(subparsers) -> None:
    p = subparsers.add_parser("score", help="score facts from Kafka into the scores topic (exactly once)",
                              description="Consume facts, read RTI windows as of each event, call Triton "
                                          "once per batch, produce scores + offsets in one Kafka transaction.")
    add_flags(p, "score", ScoreSettings, SCORE_FLAGS)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT (0: off)")
    p.add_argument("--exit-when-idle", type=float, metavar="S", help="exit after S seconds without input")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser("serve", help="HTTP scoring API (POST /v1/score, /v1/infer; bearer token)",
                              description="FastAPI + uvicorn. The token comes from $RELSTREAM_API_TOKEN "
                                          "(serve.token_env).")
    add_flags(p, "serve", ServeSettings, SERVE_FLAGS)
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


# ----- score -------------------------------------------------------------------------------------

def cmd_score(args) -> int:
    # the Kafka, Redis and Triton clients load when the command runs, not when the CLI builds
    # its parser (every `relstream` command builds every command's parser)
    from scorer.kafka_service import run_rebuilding

    from .serving import build_kafka_scorer, install_signal_handlers

    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_from_args(args)
    settings, _ = apply_flags(section(cfg, "score", ScoreSettings), args, SCORE_FLAGS)
    metrics = ScorerMetrics()
    scorer = build_kafka_scorer(cfg, settings, metrics=metrics)
    if args.metrics_port:
        # RELSTREAM_METRICS_HOST=0.0.0.0 in containers, so Prometheus can scrape the pod
        start_http_server(args.metrics_port, addr=os.environ.get("RELSTREAM_METRICS_HOST", "127.0.0.1"),
                          registry=metrics.registry)
    install_signal_handlers(scorer)
    scorer.start()
    print(f"relstream score: plan {scorer.plan.name}, topics {scorer.facts_topics} -> {scorer.scores_topic} "
          f"(DLQ {scorer.dlq_topic}), group {settings.group_id}, model {scorer.triton.model_name} "
          f"@ {scorer.triton.url}, exactly-once (transactional.id {settings.transactional_id})",
          file=sys.stderr, flush=True)
    stats, rebuilds = run_rebuilding(scorer, lambda: build_kafka_scorer(cfg, settings, metrics=metrics),
                                     idle_exit_s=args.exit_when_idle, on_new=install_signal_handlers)
    print(json.dumps({"batches": stats.batches, "consumed": stats.consumed, "scored": stats.scored,
                      "dead_letters": stats.dead_letters, "aborts": stats.aborts,
                      "triton_retries": stats.triton_retries, "client_rebuilds": rebuilds}), flush=True)
    return 0


# ----- serve -------------------------------------------------------------------------------------

def bound_url(sock) -> str:
    """``http://host:port`` of a bound listening socket (the real port, also when 0 was asked for)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cmd_serve(args) -> int:
    # uvicorn and the app's clients load when the command runs (see cmd_score)
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .serving import api_token

    cfg = config_from_args(args)
    settings, overrides = apply_flags(section(cfg, "serve", ServeSettings), args, SERVE_FLAGS)
    # Workers are separate processes: hand them the same settings through the environment.
    if getattr(args, "config", None):
        os.environ["RELSTREAM_CONFIG"] = str(args.config)
    for key, value in overrides.items():
        os.environ[f"RELSTREAM__SERVE__{key.upper()}"] = json.dumps(value) if not isinstance(value, str) else value
    api_token(settings)  # fail fast, before forking workers
    serving_plan(cfg, settings.plan)
    config = uvicorn.Config("relstream.serving:serve_app_factory", factory=True, host=settings.host, port=settings.port,
                            workers=settings.workers, log_level=args.log_level, access_log=False,
                            loop="uvloop", http="httptools", timeout_graceful_shutdown=5)
    # Bind before printing, so the address printed is the one clients can reach (port 0 = a free
    # port chosen by the kernel), and the workers share this very socket.
    sock = config.bind_socket()
    print(f"relstream serve: {bound_url(sock)} ({settings.workers} worker(s), "
          f"batch window {settings.batch_window_ms} ms, max batch {settings.max_batch}, "
          f"auth {'on' if settings.auth else 'OFF'})", file=sys.stderr, flush=True)
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    if config.workers == 1 and not server.started:
        print("relstream serve: the server did not start (see the log above)", file=sys.stderr, flush=True)
        return 3
    return 0
