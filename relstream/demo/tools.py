"""The demo's tools: its services as subprocesses, one-off commands, the model in Triton, its
configuration, waits. Also used by the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import httpx
import numpy as np
import yaml

from relstream.stack.process import Process, ProcessExited
from schemas.plan_loading import load_plan
from schemas.tensors import stack_requests
from scorer.triton import make_inputs

TOKEN_ENV = "RELSTREAM_API_TOKEN"  # serve.token_env in the demo's config (the default)
REPO_ROOT = Path(__file__).resolve().parents[2]
TX_SUBJECT = "transactions-value"
LABEL_SUBJECT = "transaction-labels-value"  # label events of the fraud_labels plan
LABEL_PLAN = "fraud_labels"
SCORES_SUBJECT = "scores-value"
DLQ_SUBJECT = "dead-letters-value"
TX_FIELDS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
PARITY_TOLERANCE = 1e-5


class DemoError(RuntimeError):
    """A stage failed; carries the stage name and the tail of the log that explains it."""

    def __init__(self, stage: str, message: str, log_path: Path | None = None, tail: str = ""):
        self.stage = stage
        self.log_path = log_path
        self.tail = tail
        text = f"stage '{stage}' failed: {message}"
        if log_path is not None:
            text += f"\n  log: {log_path}"
        if tail:
            text += "\n  last lines:\n" + "\n".join("    " + line for line in tail.rstrip().splitlines())
        super().__init__(text)


def log_tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not Path(path).exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


# ----- subprocesses -----------------------------------------------------------------------------

def relstream_argv(config: Path | None, *args: str) -> list[str]:
    """``python -m relstream [--config FILE] ARGS`` with this interpreter.

    (``-m relstream``, not ``-m relstream.cli``: run as ``__main__``, the CLI module would exist
    twice and a plugin's ``relstream.cli.CliError`` would escape as a traceback.)"""
    argv = [sys.executable, "-m", "relstream"]
    if config is not None:
        argv += ["--config", str(config)]
    return argv + [str(a) for a in args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PYTHONFAULTHANDLER", "1")  # SIGABRT -> every thread's stack in the log (Service.dump_stacks)
    # two shared cores: one torch/BLAS thread per service keeps them from fighting
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run_step(stage: str, argv: Sequence[str], log_path: Path, timeout_s: float = 1800,
             env: Mapping[str, str] | None = None) -> str:
    """Run one command to completion with output to ``log_path``; DemoError on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                  env=child_env(env), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DemoError(stage, f"timed out after {timeout_s:.0f}s: {shlex.join(argv)}", log_path,
                            log_tail(log_path)) from None
    if proc.returncode != 0:
        raise DemoError(stage, f"exit code {proc.returncode}: {shlex.join(argv)}", log_path, log_tail(log_path))
    return log_tail(log_path, 5)


class Service(Process):
    """A long-running relstream subprocess (ingest, score, serve) of the demo, with its own log
    file (:class:`relstream.stack.process.Process`); failures are DemoErrors of a stage."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None):
        super().__init__(name, argv, log_path, env=child_env(env), cwd=REPO_ROOT)

    def check_alive(self, stage: str) -> None:
        if self.proc is not None and not self.alive:
            raise DemoError(stage, f"{self.name} exited with code {self.proc.returncode}", self.log_path,
                            log_tail(self.log_path))

    def dump_stacks(self, lines: int = 80) -> str:
        """A hung service's Python stacks (faulthandler on SIGABRT); the process dies doing it."""
        if not self.alive:
            return self.tail(lines)
        os.kill(self.proc.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.tail(lines)

    def wait_for_log(self, needle: str, timeout_s: float, stage: str, count: int = 1) -> None:
        """Wait until ``needle`` occurs ``count`` times in the log (restarts append to it)."""
        try:
            super().wait_for_log(needle, timeout_s, count)
        except ProcessExited:
            self.check_alive(stage)
        except TimeoutError:
            raise DemoError(stage, f"{self.name} did not log {needle!r} within {timeout_s:.0f}s", self.log_path,
                            self.tail()) from None


# ----- events on Kafka ----------------------------------------------------------------------------

def latest_version_dir(model_repository: str | Path, model_name: str) -> Path:
    model_dir = Path(model_repository) / model_name
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
        if model_dir.exists() else []
    if not versions:
        raise FileNotFoundError(f"no version of model {model_name!r} under {model_dir}")
    return model_dir / str(versions[-1])


def load_model(triton_http_url: str, model_name: str, timeout_s: float = 180.0) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton_http_url.split("://", 1)[-1], network_timeout=timeout_s,
                                              connection_timeout=timeout_s)
    try:
        client.load_model(model_name)
        if not client.is_model_ready(model_name):
            raise RuntimeError(f"Triton reports model {model_name!r} not ready after load")
    finally:
        client.close()


def warm_up(triton_grpc_url: str, model_name: str, version_dir: str | Path, calls: int = 3) -> None:
    """A few inferences on synthetic requests, so the first streamed event does not pay for the
    Python backend's first execute (the requests are far from any real data; nothing is stored)."""
    import tritonclient.grpc as grpcclient

    from offline.export import synthetic_requests

    plan = load_plan(Path(version_dir) / "plan.yaml")
    client = grpcclient.InferenceServerClient(triton_grpc_url)
    try:
        for i in range(calls):
            tensors = stack_requests(plan, synthetic_requests(plan, n=4, seed=i))
            client.infer(model_name, make_inputs(plan, tensors, grpcclient))
    finally:
        client.close()


# ----- configuration for the services ------------------------------------------------------------

def write_service_config(path: Path, stack, *, run_dir: Path, model_name: str, topics: Mapping[str, Any],
                         registry_dir: Path, redis_db: int = 0, ingest: Mapping[str, Any] | None = None,
                         score: Mapping[str, Any] | None = None, serve: Mapping[str, Any] | None = None,
                         plan: str | None = None) -> Path:
    """A relstream.yaml pointing every service at ``stack`` (a LocalStack)."""

    cfg: dict[str, Any] = {
        "run_dir": str(run_dir),
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
        "redis": {"url": f"redis://127.0.0.1:{stack.ports['redis']}/{redis_db}"},
        "triton": {"url": stack.triton_http_url, "model_name": model_name},
        "topics": dict(topics),
        "ingest": {"registry": str(registry_dir), **dict(ingest or {})},
        "score": {"registry_dir": str(registry_dir), "triton_grpc_url": stack.triton_grpc_url, **dict(score or {})},
        "serve": {"triton_grpc_url": stack.triton_grpc_url, **dict(serve or {})},
    }
    if plan:
        cfg["plan"] = plan
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ----- the demo --------------------------------------------------------------------------------------

def stop_command(config: Path | None, run_dir: Path) -> str:
    """The pasteable command that stops the kept stack and the services recorded with it."""
    python = shlex.quote(sys.executable)
    if config:
        return f"{python} -m relstream --config {shlex.quote(str(config))} stack down"
    return f"RELSTREAM__RUN_DIR={shlex.quote(str(run_dir))} {python} -m relstream stack down"


SERVE_BANNER = re.compile(r"relstream serve: (http://\S+)")


def serve_address(serve: "Service", timeout_s: float, stage: str) -> str:
    """The address `relstream serve` printed on start (its real bound port), read from its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        serve.check_alive(stage)
        text = serve.log_path.read_text(errors="replace") if serve.log_path.exists() else ""
        found = SERVE_BANNER.findall(text)
        if found:
            return found[-1]  # the log is appended to: the last banner is this start's
        time.sleep(0.1)
    raise DemoError(stage, f"relstream serve printed no address within {timeout_s:.0f}s", serve.log_path,
                    serve.tail())


def wait_http(url: str, timeout_s: float, check: Callable[[], None] | None = None) -> None:

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s ({last})")


