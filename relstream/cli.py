"""The `relstream` command line.

    relstream [--config PATH] stack up|down|status|logs|env
    relstream [--config PATH] config show|check
    relstream [--config PATH] smoke

Other packages add subcommands: each of PLUGIN_MODULES that exists must define
``register(subparsers)``, which adds parsers and sets ``func=handler`` on them
(``parser.set_defaults(func=handler)``). A handler gets the parsed ``args`` and returns an exit
code (or None for 0); it loads the configuration with ``config_from_args(args)``. Expected
failures should raise ``relstream.cli.CliError`` (or ConfigError / StackError /
PrerequisiteError, or an exception type a plugin lists in its ``EXPECTED_ERRORS``): they are
printed as one message without a traceback. Plugins below the app in the layers (``offline``)
get what they need of it through ``args``: ``args.local_triton_urls()`` gives the local stack's
Triton (HTTP URL, gRPC address).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Sequence

import yaml

from .config import ConfigError, config_from_args, stack_from_config
from .demo_smoke import run_smoke
from .errors import CliError
from .stack import PortInUseError, StackError
from .stack.kafka_jars import JarCacheError
from .stack.prereqs import PrerequisiteError

# the command modules of the app; a package that is not installed (offline without the train
# extra) is skipped
PLUGIN_MODULES = ("offline.cli", "relstream.ingest_cli", "relstream.serving_cli", "relstream.model_cli")
__all__ = ["CliError", "build_parser", "config_from_args", "main"]


# ------------------------------------------------------------------------------------ stack
def _stack(args):
    cfg = config_from_args(args)
    st = stack_from_config(cfg)
    return cfg, st


def cmd_stack_up(args) -> int:
    cfg, st = _stack(args)
    print(f"starting local stack in {st.run_dir} ({', '.join(st.components)}) ...", flush=True,
          file=sys.stderr if args.json else sys.stdout)
    t0 = time.monotonic()
    took = st.up()
    total = time.monotonic() - t0
    if args.json:
        print(json.dumps({"healthy_s": round(total, 2), "per_component_s": took,
                          "addresses": st.addresses(), "pids": st.pids()}, indent=1))
    else:
        for name, status in st.status().items():
            print(f"  {name:<7} {status['state']:<9} pid {status['pid']:<8} {status['address']}")
        if "triton" in st.components:
            print(f"  triton  grpc {st.triton_grpc_url}  metrics {st.triton_metrics_url}")
            print(f"  model repository: {st.model_repository}")
        print(f"healthy in {total:.1f}s; logs in {st.run_dir / 'logs'}; "
              f"addresses in {st.run_dir / 'stack.json'}")
        print("other relstream commands with the same run_dir use this stack automatically; "
              "`relstream stack env` prints the settings for other shells")
    return 0


def cmd_stack_down(args) -> int:
    _, st = _stack(args)
    pids = {**st.services(), **st.pids()}
    st.down()
    print(f"stopped {', '.join(f'{n} (pid {p})' for n, p in pids.items()) or 'nothing (not running)'}")
    return 0


def cmd_stack_status(args) -> int:
    _, st = _stack(args)
    status = st.status()
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        for name, s in status.items():
            extra = f"  ({s['reason']})" if s.get("reason") else ""
            print(f"{name:<7} {s['state']:<9} pid {str(s['pid'] or '-'):<8} "
                  f"{s['address'] or '-'}{extra}")
    running = sum(s["state"] == "running" for s in status.values())
    return 0 if running == len(status) else 3


def cmd_stack_logs(args) -> int:
    _, st = _stack(args)
    names = [args.component] if args.component else list(st.components)
    for name in names:
        if name not in st.components:
            raise CliError(f"unknown component {name!r}; choose from {list(st.components)}")
        if len(names) > 1:
            print(f"==> {st.log_file(name)} <==")
        print(st.log_tail(name, args.lines))
    return 0


def cmd_stack_env(args) -> int:
    _, st = _stack(args)
    if not st.is_up():
        raise CliError(f"the local stack in {st.run_dir} is not running; "
                       f"start it with `relstream stack up`")
    frag = st.config_overrides()
    if args.format == "json":
        print(json.dumps(frag, indent=1))
    elif args.format == "yaml":
        print(yaml.safe_dump(frag, sort_keys=False), end="")
    else:
        for section, values in frag.items():
            for key, value in values.items():
                print(f"export RELSTREAM__{section.upper()}__{key.upper()}={value}")
    return 0


# ----------------------------------------------------------------------------------- config
def cmd_config_show(args) -> int:
    cfg = config_from_args(args)
    data = cfg.model_dump(mode="json")
    for key in list(data["kafka"]["client"]):
        if "password" in key or "secret" in key:
            data["kafka"]["client"][key] = "**********"
    if data["redis"]["password"] is not None:
        data["redis"]["password"] = "**********"
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def cmd_config_check(args) -> int:
    cfg = config_from_args(args)
    print(f"configuration OK ({cfg.source or 'defaults + environment'})")
    return 0


def cmd_smoke(args) -> int:
    return run_smoke(config_from_args(args), keep=args.keep)


# ----------------------------------------------------------------------------------- parser
CORE_COMMANDS = ("stack", "config", "smoke")


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relstream",
        description="Real-time relational scoring: Kafka -> Redis windows -> Triton.")
    parser.add_argument("--config", metavar="PATH",
                        help="YAML config file (default: $RELSTREAM_CONFIG, else ./relstream.yaml "
                             "if present); RELSTREAM__SECTION__KEY env vars override it")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    stack = sub.add_parser("stack", help="run Kafka, Redis and Triton locally (no Docker)",
                           description="Supervise a local Kafka (KRaft), Redis and Triton on "
                                       "127.0.0.1; state, logs and PID files in run_dir.")
    ssub = stack.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    p = ssub.add_parser("up", help="start the stack (idempotent) and wait until healthy",
                        description="Start every component that is not running; wait for Kafka "
                                    "metadata, Redis PING and Triton readiness.")
    p.add_argument("--json", action="store_true", help="print addresses and timings as JSON")
    p.set_defaults(func=cmd_stack_up)
    p = ssub.add_parser("down", help="stop exactly the processes `up` started",
                        description="Stop the stack's child processes by PID and clean up.")
    p.set_defaults(func=cmd_stack_down)
    p = ssub.add_parser("status", help="show each component's state (exit 3 if not all running)",
                        description="Show state, PID and address of each component.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stack_status)
    p = ssub.add_parser("logs", help="print the tail of component logs",
                        description="Print the last lines of one or all component logs.")
    p.add_argument("component", nargs="?", choices=["kafka", "redis", "triton"],
                   help="component (default: all)")
    p.add_argument("-n", "--lines", type=int, default=40, help="lines per log (default 40)")
    p.set_defaults(func=cmd_stack_logs)
    p = ssub.add_parser("env", help="print settings that point relstream at this stack",
                        description="Print the stack's addresses as env exports, YAML or JSON.")
    p.add_argument("--format", choices=["sh", "yaml", "json"], default="sh",
                   help="output format (default sh)")
    p.set_defaults(func=cmd_stack_env)

    config = sub.add_parser("config", help="inspect the configuration",
                            description="Validate or print the effective configuration.")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = csub.add_parser("show", help="print the effective configuration (secrets masked)",
                        description="Print the merged configuration as YAML, secrets masked.")
    p.set_defaults(func=cmd_config_show)
    p = csub.add_parser("check", help="validate the configuration",
                        description="Validate the configuration; errors name the key.")
    p.set_defaults(func=cmd_config_check)

    p = sub.add_parser("smoke", help="smoke run: stack up, one Kafka event, one Triton call, down",
                       description="Start the local stack, produce and consume one event through "
                                   "a consumer group, run one inference on the smoke model, "
                                   "stop the stack, print a summary.")
    p.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    p.set_defaults(func=cmd_smoke)

    if plugins:
        load_plugins(sub)
    return parser


def _first_command(argv: Sequence[str]) -> str | None:
    """The subcommand word in argv (skipping --config PATH), or None."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--config":
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def load_plugins(subparsers, modules: Sequence[str] = PLUGIN_MODULES) -> list[str]:
    """Import each plugin module that exists and let it add its subcommands."""
    loaded = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only "this plugin (or its package) does not exist" is skipped; a plugin that
            # exists but fails to import (missing dependency, bug) must surface.
            parts = name.split(".")
            if exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
                continue
            raise
        module.register(subparsers)
        loaded.append(name)
    return loaded


def _local_triton_urls(args) -> tuple[str, str]:
    st = stack_from_config(config_from_args(args))
    return st.triton_http_url, st.triton_grpc_url


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # core commands do not import the plugins (faster, and a broken plugin cannot block
    # `stack down`); everything else, including the top-level --help, loads them all
    parser = build_parser(plugins=_first_command(argv) not in CORE_COMMANDS)
    args = parser.parse_args(argv)
    args.local_triton_urls = lambda: _local_triton_urls(args)
    expected = tuple(err for module in PLUGIN_MODULES if module in sys.modules
                     for err in getattr(sys.modules[module], "EXPECTED_ERRORS", ()))
    try:
        code = args.func(args)
    except (CliError, ConfigError, PrerequisiteError, StackError, PortInUseError,
            JarCacheError, *expected) as exc:
        print(f"relstream: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ConfigError, PrerequisiteError)) else 1
    except KeyboardInterrupt:
        print("relstream: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
