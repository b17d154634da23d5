"""`relstream model ...`: ship a version, run it as a canary, promote it, roll it back.

    relstream model deploy VERSION [--canary PCT] [--skip-check NAME]   first version: primary
    relstream model promote                                              canary -> primary
    relstream model rollback                                             drop canary / previous primary
    relstream model refresh-embeddings --from VERSION --embeddings NEW.parquet
    relstream model status [--metrics-url URL ...] [--json]
    relstream model sync                                                 reload routed versions

Settings come from the relstream configuration (``triton.url``, ``triton.model_name``,
``stack.model_repository``, ``plan``); flags override them. See docs/operations.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

from . import lifecycle as lc
from .config import config_from_args, serving_plan, triton_grpc_url
from .errors import CliError
from .model_checks import CHECKS, DeployRefused
from .model_ops import ModelOps
from .triton_control import ModelOpsError, TritonControl


def _ops(args) -> ModelOps:
    cfg = config_from_args(args)
    repo = Path(args.model_repository or cfg.model_repository)
    contract = serving_plan(cfg, args.plan) if args.plan or cfg.plan else None
    triton = TritonControl(triton_grpc_url(cfg, args.triton_grpc_url))
    return ModelOps(repository=repo, model=args.model or cfg.triton.model_name, triton=triton,
                    contract=contract, routing_path=Path(args.routing_file) if args.routing_file else None,
                    drain_s=args.drain_s, warmup_requests=args.warmup,
                    log=lambda msg: print(f"  {msg}", flush=True))


def _run(args, action):
    ops = _ops(args)
    try:
        report = action(ops)
    except (DeployRefused, ModelOpsError, lc.LifecycleError) as exc:
        raise CliError(str(exc)) from None
    finally:
        ops.triton.close()
    return ops, report


def cmd_deploy(args) -> int:
    _, report = _run(args, lambda ops: ops.deploy(args.version, args.canary, skip=args.skip_check))
    print(json.dumps(report, indent=1) if args.json else _fmt_action(report))
    return 0


def cmd_promote(args) -> int:
    _, report = _run(args, lambda ops: ops.promote())
    print(json.dumps(report, indent=1) if args.json else _fmt_action(report))
    return 0


def cmd_rollback(args) -> int:
    _, report = _run(args, lambda ops: ops.rollback())
    print(json.dumps(report, indent=1) if args.json else _fmt_action(report))
    return 0


def cmd_sync(args) -> int:
    _, report = _run(args, lambda ops: ops.sync())
    print(json.dumps(report, indent=1) if args.json else
          f"sync done: loaded {report['loaded'] or 'nothing (all routed versions READY)'}")
    return 0


def cmd_refresh(args) -> int:
    _, report = _run(args, lambda ops: ops.refresh_embeddings(args.from_version, Path(args.embeddings)))
    print(json.dumps(report, indent=1) if args.json else
          f"version {report['version']} = version {report['from']} with {args.embeddings}; "
          f"roll it out with: {report['next']}")
    return 0


def cmd_status(args) -> int:
    _, report = _run(args, lambda ops: ops.status(args.metrics_url))
    print(json.dumps(report, indent=1, default=str) if args.json else format_status(report))
    return 0


def _fmt_action(report: dict) -> str:
    split = ", ".join(f"v{v}: {p:g}%" for v, p in report.get("split", {}).items())
    extra = ""
    if "warmup_requests" in report:
        extra = f" (smoke ok, warmed with {report['warmup_requests']} requests, p50 {report.get('warmup_p50_ms')} ms)"
    return f"{report['action']} done{extra}; traffic: {split or 'none'}"


def _ts(ns) -> str:
    if not ns:
        return "-"
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def format_status(report: dict) -> str:
    lines = [f"model {report['model']}  (routing: {report['routing_file']})"]
    head = f"{'ver':>4} {'role':<9} {'traffic':>8} {'triton':<11} {'fingerprint':<17} {'emb newest':<17} " \
           f"{'ok':>7} {'fail':>5} {'avg ms':>7} {'avg batch':>9} {'score mean':>10} {'p50':>6} {'p90':>6}"
    lines.append(head)
    for r in report["versions"]:
        st = r["triton_stats"] or {}
        sc = r["scores"] or {}
        q = sc.get("quantiles", {})
        avg_batch = st["inferences"] / st["executions"] if st.get("executions") else None

        def num(x, fmt):
            return format(x, fmt) if x is not None else "-"
        lines.append(f"{r['version']:>4} {r['role'] or '-':<9} {r['traffic_percent']:>7g}% {r['triton']:<11} "
                     f"{r['fingerprint'] or '-':<17} {_ts(r['embeddings_newest_ns']):<17} "
                     f"{st.get('success', 0):>7} {st.get('fail', 0):>5} {num(st.get('avg_request_ms'), '7.2f'):>7} "
                     f"{num(avg_batch, '9.1f'):>9} {num(sc.get('mean'), '10.4f'):>10} "
                     f"{num(q.get(0.5), '6.3f'):>6} {num(q.get(0.9), '6.3f'):>6}")
    if report["not_ready_but_routed"]:
        lines.append(f"WARNING: routed versions not READY in Triton: {report['not_ready_but_routed']} "
                     "(run `relstream model sync`)")
    return "\n".join(lines)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Triton model name (default: triton.model_name)")
    p.add_argument("--model-repository", help="model repository (default: stack.model_repository)")
    p.add_argument("--triton-grpc-url", help="Triton gRPC host:port (default: from triton.url / the local stack)")
    p.add_argument("--plan", help="serving-plan YAML the scorers run (default: `plan`, else the primary's)")
    p.add_argument("--routing-file", help="routing state file (default: <repository>/<model>/routing.json)")
    p.add_argument("--drain-s", type=float, default=2.0,
                   help="seconds between moving traffic off a version and unloading it (default 2)")
    p.add_argument("--warmup", type=int, default=32, help="warm-up inferences before traffic (default 32)")
    p.add_argument("--json", action="store_true", help="print a JSON report")


def register(subparsers) -> None:
    model = subparsers.add_parser("model", help="model versions: deploy, canary, promote, rollback, status",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    msub = model.add_subparsers(dest="model_command", required=True)

    p = msub.add_parser("deploy", help="load, check and warm a version; first one is primary, else a canary")
    p.add_argument("version", type=int)
    p.add_argument("--canary", type=float, metavar="PERCENT",
                   help="share of entities (stable hash) for this version; re-run to ramp")
    p.add_argument("--skip-check", action="append", default=[], choices=CHECKS,
                   help="skip a safety check (recorded in the audit trail); repeatable")
    _common(p)
    p.set_defaults(func=cmd_deploy)

    p = msub.add_parser("promote", help="the canary becomes the primary; the old primary is unloaded")
    _common(p)
    p.set_defaults(func=cmd_promote)

    p = msub.add_parser("rollback", help="drop the canary, or go back to the previous primary")
    _common(p)
    p.set_defaults(func=cmd_rollback)

    p = msub.add_parser("sync", help="load every routed version Triton is not serving (after a restart)")
    _common(p)
    p.set_defaults(func=cmd_sync)

    p = msub.add_parser("refresh-embeddings", help="copy a version with a new embeddings.parquet (no retraining)")
    p.add_argument("--from", dest="from_version", type=int, required=True, help="version to copy")
    p.add_argument("--embeddings", required=True, help="new embeddings.parquet")
    _common(p)
    p.set_defaults(func=cmd_refresh)

    p = msub.add_parser("status", help="versions, traffic split, per-version latency and score distribution")
    p.add_argument("--metrics-url", action="append", default=[],
                   help="a scorer/serve /metrics URL for per-version score distributions; repeatable")
    _common(p)
    p.set_defaults(func=cmd_status)
