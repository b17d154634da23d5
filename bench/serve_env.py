"""The environment of ``bench_serve.py``: the local stack, the model in Triton, the service config, the
scorer processes, the benchmark's topics and its scheduling priority."""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

from relstream.stack.process import Process

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-" + uuid.uuid4().hex


def start_stack(run_dir: Path):
    from relstream.stack import LocalStack
    st = LocalStack(run_dir, run_dir / "models", stop_with_owner=True)
    st.up()
    return st


def export_and_load(plan, stack, model_name: str, instances: int, kind: str) -> dict:
    """``kind``: ``export`` = offline.export.export_untrained (the real model code, random weights),
    ``fixture`` = the scorer tests' numpy model (isolates the serving overhead from model cost),
    or a path to a model repository directory holding ``model_name`` (e.g. a trained export)."""
    import shutil

    import tritonclient.http as httpclient
    info: dict = {"name": model_name, "kind": kind, "instances": instances}
    if kind == "export":
        from offline.export import export_untrained
        vdir = export_untrained(plan, stack.model_repository, model_name=model_name, instance_count=instances)
        manifest = json.loads((Path(vdir) / "manifest.json").read_text())
        info.update(version=manifest.get("version"), parameters=manifest.get("parameters"),
                    trained=manifest.get("trained", False))
    elif kind == "fixture":
        from tests.scorer.model_repo import write_test_model
        write_test_model(plan, stack.model_repository, name=model_name)
        cfg = stack.model_repository / model_name / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace("count: 1,", f"count: {instances},"))
    else:
        src = Path(kind) / model_name
        if not src.is_dir():
            raise SystemExit(f"--model: no model {model_name!r} in repository {kind}")
        shutil.copytree(src, stack.model_repository / model_name, dirs_exist_ok=True)
    client = httpclient.InferenceServerClient(stack.triton_http_url.split("://")[1], network_timeout=300)
    client.load_model(model_name)
    assert client.is_model_ready(model_name)
    client.close()
    return info


def write_config(path: Path, stack, model_name: str, topics: tuple[str, str, str], registry: Path,
                 args) -> Path:
    import yaml
    facts, scores, dlq = topics
    cfg = {
        "run_dir": str(path.parent / "run"),
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
        "redis": {"url": stack.redis_url},
        "triton": {"url": stack.triton_http_url, "model_name": model_name},
        "topics": {"facts": facts, "scores": scores, "dlq": dlq},
        "serve": {"plan": "fraud", "triton_grpc_url": stack.triton_grpc_url, "batch_window_ms": args.batch_window_ms,
                  "batch_interval_ms": args.batch_interval_ms,
                  "max_batch": args.max_batch, "max_in_flight": args.max_in_flight,
                  "window_deadline_ms": args.window_deadline_ms},
        "score": {"plan": "fraud", "triton_grpc_url": stack.triton_grpc_url, "registry_dir": str(registry),
                  "max_batch": args.kafka_max_batch, "group_id": f"bench-{facts}",
                  "transactional_id": f"bench-{facts}", "poll_timeout_ms": args.kafka_poll_ms,
                  "batch_interval_ms": args.kafka_batch_interval_ms,
                  "commit_interval_ms": getattr(args, "kafka_commit_ms", 0.0),
                  **json.loads(getattr(args, "kafka_score_settings", None) or "{}")},
    }
    cfg["serve"] = {k: v for k, v in cfg["serve"].items() if v is not None}  # None: the service's default
    path.write_text(yaml.safe_dump(cfg))
    return path


def service_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELSTREAM")}
    env["RELSTREAM_API_TOKEN"] = TOKEN
    return env


def start_serve(config: Path, port: int, workers: int, log: Path) -> Process:
    argv = [sys.executable, "-m", "relstream.cli", "--config", str(config), "serve", "--port", str(port),
            "--workers", str(workers)]
    return Process("serve", argv, log, env=service_env(), cwd=ROOT).start()


def wait_ready(url: str, proc: Process, log: Path, timeout: float = 120) -> None:
    proc.wait_http(f"{url}/readyz", timeout)


def stop(proc: Process) -> None:
    proc.stop(20)


def set_autogroup_nice(pids, nice: int) -> list[str]:
    """Give the scheduling autogroups (sessions) of ``pids`` and their children this nice value."""
    import psutil
    groups = set()
    for pid in pids:
        try:
            family = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in family:
            try:
                Path(f"/proc/{p}/autogroup").write_text(str(nice))
                groups.add(Path(f"/proc/{p}/autogroup").read_text().split()[0])
            except OSError:
                pass  # no autogroup support, or the process is gone
    return sorted(groups)


def autogroup_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def make_topics(stack) -> tuple[str, str, str]:
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    suffix = uuid.uuid4().hex[:8]
    names = (f"bench-facts-{suffix}", f"bench-scores-{suffix}", f"bench-dlq-{suffix}")
    futures = admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names])
    for f in futures.values():
        f.result(30)
    time.sleep(0.5)
    return names
