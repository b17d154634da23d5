"""How each real server is launched and how its health is judged.

Each component knows its port roles, the command line and environment to start it, any
one-time preparation (Kafka storage formatting, Triton backend directory) and a health probe.
"""
from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .kafka_jars import KAFKA_VERSION, ensure_kafka_jars
from .ports import HOST
from .process import StackError


@dataclass
class ComponentSettings:
    """Knobs shared by the components (filled from the `stack` config section)."""

    kafka_version: str = ""
    kafka_heap: str = "512m"
    kafka_broker_config: dict[str, str] = field(default_factory=dict)
    redis_persistence: bool = True  # AOF (everysec): windows survive a restart; see docs/operations.md
    triton_log_verbose: int = 0
    java: str = "java"
    redis_server: str = "redis-server"


class Component:
    name: str = ""
    port_roles: tuple[str, ...] = ()

    def __init__(self, run_dir: Path, settings: ComponentSettings):
        self.run_dir = run_dir
        self.settings = settings
        self.dir = run_dir / self.name

    def prepare(self, ports: dict[str, int]) -> None:
        """One-time setup before the first start (idempotent)."""

    def command(self, ports: dict[str, int]) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def healthy(self, ports: dict[str, int]) -> tuple[bool, str]:
        """(is healthy, reason when not)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------- Kafka
class KafkaComponent(Component):
    name = "kafka"
    port_roles = ("broker", "controller")

    def _jars(self) -> Path:
        return ensure_kafka_jars(self.settings.kafka_version or KAFKA_VERSION)

    def properties(self, ports: dict[str, int]) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{ports['controller']}",
            "listeners": f"PLAINTEXT://{HOST}:{ports['broker']},CONTROLLER://{HOST}:{ports['controller']}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{ports['broker']}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "group.initial.rebalance.delay.ms": "0",
            # one broker: every internal topic must live with a single replica
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",  # fewer partitions -> faster first group join
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "default.replication.factor": "1",
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        props.update({k: str(v) for k, v in self.settings.kafka_broker_config.items()})
        return props

    def _write_configs(self, ports: dict[str, int]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "server.properties"
        cfg.write_text("".join(f"{k}={v}\n" for k, v in self.properties(ports).items()))
        (self.dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        return cfg

    def _java_base(self) -> list[str]:
        heap = self.settings.kafka_heap
        return [self.settings.java, f"-Xmx{heap}", f"-Xms{min_heap(heap)}",
                "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.dir / 'logs'}",
                "-cp", f"{self._jars()}/*"]

    def prepare(self, ports: dict[str, int]) -> None:
        cfg = self._write_configs(ports)
        if (self.dir / "data" / "meta.properties").exists():
            return
        cluster_id = _kafka_cluster_id()
        proc = subprocess.run(
            self._java_base() + ["kafka.tools.StorageTool", "format", "-t", cluster_id,
                                 "-c", str(cfg), "--ignore-formatted"],
            capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage failed (exit {proc.returncode}):\n"
                             f"{(proc.stdout + proc.stderr)[-3000:]}")

    def command(self, ports: dict[str, int]) -> tuple[list[str], dict[str, str]]:
        cfg = self._write_configs(ports)
        return self._java_base() + ["kafka.Kafka", str(cfg)], dict(os.environ)

    def healthy(self, ports: dict[str, int]) -> tuple[bool, str]:
        from confluent_kafka.admin import AdminClient
        admin = AdminClient({"bootstrap.servers": f"{HOST}:{ports['broker']}",
                             "socket.timeout.ms": 2000, "log_level": 0})
        try:
            md = admin.list_topics(timeout=2)
        except Exception as exc:  # KafkaException: not answering metadata yet
            return False, str(exc)
        if not md.brokers:
            return False, "metadata lists no broker"
        if md.controller_id < 0:
            return False, "no active controller yet"
        return True, ""


def min_heap(heap: str) -> str:
    """Initial heap: a quarter of the max (keeps RSS small on a shared box)."""
    units = {"k": 1, "m": 1024, "g": 1024 * 1024}
    suffix = heap[-1].lower()
    kib = int(heap[:-1]) * units[suffix] if suffix in units else int(heap) // 1024
    return f"{max(kib // 4, 16 * 1024) // 1024}m"


def _kafka_cluster_id() -> str:
    """Base64 UUID as Kafka makes them; never starting with '-' (it would parse as a flag)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


LOG4J2_PROPERTIES = """\
status = error
name = relstream-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = out
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = WARN
logger.coordinator.name = kafka.coordinator
logger.coordinator.level = WARN
logger.log.name = kafka.log
logger.log.level = WARN
"""


# --------------------------------------------------------------------------------- Redis
class RedisComponent(Component):
    name = "redis"
    port_roles = ("port",)

    def command(self, ports: dict[str, int]) -> tuple[list[str], dict[str, str]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [self.settings.redis_server, "--port", str(ports["port"]), "--bind", HOST,
                "--dir", str(self.dir), "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", ""]
        if self.settings.redis_persistence:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        else:
            argv += ["--save", "", "--appendonly", "no"]
        return argv, dict(os.environ)

    def healthy(self, ports: dict[str, int]) -> tuple[bool, str]:
        import redis
        try:
            client = redis.Redis(host=HOST, port=ports["port"], socket_timeout=1,
                                 socket_connect_timeout=1)
            ok = client.ping()
            client.close()
            return bool(ok), "" if ok else "PING returned false"
        except Exception as exc:  # ConnectionError / BusyLoadingError while loading the AOF
            return False, str(exc)


# -------------------------------------------------------------------------------- Triton
def pytriton_server_dir() -> Path:
    """The `tritonserver` tree inside the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nvidia-pytriton")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def triton_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The three settings the wheel's server needs (see docs: local stack notes).

    * the interpreter's own libpython (else the stub loads Debian's libpython3.11 against
      this interpreter's stdlib), and the wheel's bundled libs (its RPATH is relative);
    * this interpreter's bin first on PATH, so the isolated-mode stub finds its packages.
    """
    env = dict(os.environ if base is None else base)
    server = pytriton_server_dir()
    libdirs = [sysconfig.get_config_var("LIBDIR") or "",
               str(server.parent.parent / "nvidia_pytriton.libs")]
    old = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + ([old] if old else []))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class TritonComponent(Component):
    name = "triton"
    port_roles = ("http", "grpc", "metrics")

    def __init__(self, run_dir: Path, settings: ComponentSettings, model_repository: Path):
        super().__init__(run_dir, settings)
        self.model_repository = model_repository

    def backend_dir(self) -> Path:
        return self.dir / "backends"

    def prepare(self, ports: dict[str, int]) -> None:
        """Copy the Python backend next to this interpreter's stub (site-packages stays untouched)."""
        server = pytriton_server_dir()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise FileNotFoundError(f"nvidia-pytriton has no Python backend stub for Python {version}")
        target = self.backend_dir() / "python"
        target.mkdir(parents=True, exist_ok=True)
        for src in (server / "backends" / "python").iterdir():
            if src.is_file():
                _copy_if_changed(src, target / src.name)
        _copy_if_changed(stub, target / stub.name)
        self.model_repository.mkdir(parents=True, exist_ok=True)

    def command(self, ports: dict[str, int]) -> tuple[list[str], dict[str, str]]:
        argv = [str(pytriton_server_dir() / "bin" / "tritonserver"),
                f"--model-repository={self.model_repository}",
                f"--backend-directory={self.backend_dir()}",
                "--model-control-mode=explicit",
                "--disable-auto-complete-config",
                "--strict-readiness=true",
                "--allow-gpu-metrics=false",
                "--pinned-memory-pool-byte-size=0",
                f"--http-address={HOST}", f"--http-port={ports['http']}",
                f"--grpc-address={HOST}", f"--grpc-port={ports['grpc']}",
                f"--metrics-address={HOST}", f"--metrics-port={ports['metrics']}",
                "--allow-metrics=true", "--exit-on-error=false",
                f"--log-verbose={self.settings.triton_log_verbose}"]
        return argv, triton_environment()

    def healthy(self, ports: dict[str, int]) -> tuple[bool, str]:
        url = f"http://{HOST}:{ports['http']}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200, f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            return False, str(exc)


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size \
            and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    shutil.copy2(src, dst)
