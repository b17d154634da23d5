"""LocalStack: Kafka (KRaft), Redis and Triton as supervised processes on 127.0.0.1.

State lives in the run directory, so a second process (e.g. `relstream stack status` after
`relstream stack up`) sees the same stack:

    <run_dir>/stack.json          ports, addresses, model repository
    <run_dir>/<component>.pid     PID + kernel start time of each child we started
    <run_dir>/service-<name>.pid  relstream services left running beside the stack (adopt()),
                                  stopped by down() too (e.g. the demo's `relstream serve`)
    <run_dir>/logs/<component>.log
    <run_dir>/kafka/data          KRaft storage (formatted on first start)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping

from .components import Component, ComponentSettings, KafkaComponent, RedisComponent, TritonComponent
from .ports import HOST, ensure_ports_free, free_ports, port_in_use
from .prereqs import require
from .process import Child, ChildRecord, StackError, process_start_ticks

ALL_COMPONENTS = ("kafka", "redis", "triton")
STATE_FILE = "stack.json"
# log lines by which a server reports that its port was taken
BIND_FAILURES = ("Address already in use", "BindException", "Failed to bind",
                 "failed to start", "Could not create server TCP listening socket")

# flat port names, as used in the `stack.ports` config section and LocalStack(ports=...)
PORT_KEYS = {
    ("kafka", "broker"): "kafka",
    ("kafka", "controller"): "kafka_controller",
    ("redis", "port"): "redis",
    ("triton", "http"): "triton_http",
    ("triton", "grpc"): "triton_grpc",
    ("triton", "metrics"): "triton_metrics",
}


class LocalStack:
    def __init__(self, run_dir: Path, model_repository: Path | None = None,
                 components: Iterable[str] = ALL_COMPONENTS,
                 ports: Mapping[str, int] | None = None,
                 settings: ComponentSettings | None = None,
                 ready_timeout: float = 120.0,
                 stop_with_owner: bool = False,
                 port_wait_s: float = 10.0):
        """stop_with_owner: also start a watchdog that stops the servers if this process dies
        without calling down() (used by the test fixtures; not by `relstream stack up`)."""
        self.run_dir = Path(run_dir).resolve()
        self.components = tuple(components)
        unknown = set(self.components) - set(ALL_COMPONENTS)
        if unknown:
            raise ValueError(f"unknown stack component(s) {sorted(unknown)}; "
                             f"choose from {list(ALL_COMPONENTS)}")
        known_ports = set(PORT_KEYS.values())
        bad = set(ports or {}) - known_ports
        if bad:
            raise ValueError(f"unknown port name(s) {sorted(bad)}; choose from {sorted(known_ports)}")
        self.settings = settings or ComponentSettings()
        self.ready_timeout = ready_timeout
        saved = self._load_state()
        repo = model_repository or saved.get("model_repository") or self.run_dir / "models"
        self.model_repository = Path(repo).resolve()
        self._requested_ports = {k: int(v) for k, v in (ports or {}).items()}
        self._ports = self._resolve_ports(saved.get("ports", {}))
        self._impl: dict[str, Component] = {
            "kafka": KafkaComponent(self.run_dir, self.settings),
            "redis": RedisComponent(self.run_dir, self.settings),
            "triton": TritonComponent(self.run_dir, self.settings, self.model_repository),
        }
        self._children = {name: Child(name, self.run_dir) for name in ALL_COMPONENTS}
        self.stop_with_owner = stop_with_owner
        self.port_wait_s = port_wait_s
        self._watchdog = Child("watchdog", self.run_dir)

    # ------------------------------------------------------------------------ addresses
    def ports_of(self, name: str) -> dict[str, int]:
        return {role: self._ports[key] for (comp, role), key in PORT_KEYS.items() if comp == name}

    @property
    def ports(self) -> dict[str, int]:
        return dict(self._ports)

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self._ports['kafka']}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self._ports['redis']}/0"

    @property
    def triton_http_url(self) -> str:
        return f"http://{HOST}:{self._ports['triton_http']}"

    @property
    def triton_grpc_url(self) -> str:
        return f"{HOST}:{self._ports['triton_grpc']}"

    @property
    def triton_metrics_url(self) -> str:
        return f"http://{HOST}:{self._ports['triton_metrics']}/metrics"

    def addresses(self) -> dict[str, str]:
        out = {}
        if "kafka" in self.components:
            out["kafka"] = self.kafka_bootstrap
        if "redis" in self.components:
            out["redis"] = self.redis_url
        if "triton" in self.components:
            out.update(triton_http=self.triton_http_url, triton_grpc=self.triton_grpc_url,
                       triton_metrics=self.triton_metrics_url)
        return out

    def config_overrides(self) -> dict:
        """A relstream config fragment pointing clients at this stack."""
        frag: dict = {}
        if "kafka" in self.components:
            frag["kafka"] = {"bootstrap_servers": self.kafka_bootstrap}
        if "redis" in self.components:
            frag["redis"] = {"url": self.redis_url}
        if "triton" in self.components:
            frag["triton"] = {"url": self.triton_http_url}
            frag["stack"] = {"model_repository": str(self.model_repository)}
        return frag

    # ------------------------------------------------------------------------ lifecycle
    def up(self) -> dict[str, float]:
        """Start every component that is not running; wait until all are healthy.

        Returns seconds to healthy per component. Idempotent: running children are kept.
        """
        require(self.components)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():  # two `up`s on one run dir at once must not start two copies
            return self._up()

    def _adopt_running_ports(self) -> None:
        """Another process (or object) may have started components since __init__: use the
        ports they actually listen on."""
        saved = self._load_state().get("ports", {})
        for name in self.components:
            if self._children[name].running() is None:
                continue
            for (comp, _), key in PORT_KEYS.items():
                if comp != name or not saved.get(key) or saved[key] == self._ports[key]:
                    continue
                if self._requested_ports.get(key):
                    raise StackError(f"{name} already runs with {key}={saved[key]} (asked for "
                                     f"{self._requested_ports[key]}); run `stack down` first")
                self._ports[key] = int(saved[key])

    def _up(self) -> dict[str, float]:
        self._adopt_running_ports()
        t0 = time.monotonic()
        started: list[str] = []
        watchdog_started = self.stop_with_owner and self._watchdog.running() is None
        if watchdog_started:
            self._start_watchdog()
        try:
            for name in self.components:
                if self._children[name].running() is None:
                    # short wait: `up` reports a port held by someone else promptly
                    self._launch(name, repick_stale_ports=True,
                                 port_wait_s=min(2.0, self.port_wait_s))
                    started.append(name)
            self._save_state()
            took = {name: self._wait_healthy_retrying(name, t0, name in started)
                    for name in self.components}
        except BaseException:
            for name in reversed(started):
                try:
                    self._children[name].stop(timeout=10)
                except StackError:
                    pass
            if watchdog_started:
                self._watchdog.stop(timeout=5)
            raise
        self._save_state()
        return took

    def down(self) -> None:
        """Stop exactly the children this run directory started, newest first."""
        if not self.run_dir.is_dir():
            return
        with self._lock():
            self._down()

    def adopt(self, name: str, pid: int, argv: Iterable[str], log: Path | str) -> None:
        """Record a process started beside the stack (its own process group, e.g. a relstream
        service a demo leaves running) so that down() stops it first."""
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"service name {name!r}: letters, digits, '-' and '_' only")
        ticks = process_start_ticks(pid)
        if ticks is None:
            raise StackError(f"cannot adopt {name}: pid {pid} is not running")
        rec = ChildRecord(f"service-{name}", pid, ticks, list(map(str, argv)), str(log))
        path = self.run_dir / f"service-{name}.pid"
        tmp = path.with_suffix(".pid.tmp")
        tmp.write_text(json.dumps(rec.__dict__))
        tmp.replace(path)

    def services(self) -> dict[str, int]:
        """PIDs of live adopted services (what down() stops before the stack)."""
        out = {}
        for path in sorted(self.run_dir.glob("service-*.pid")):
            rec = Child(path.stem, self.run_dir).running()
            if rec is not None:
                out[path.stem.removeprefix("service-")] = rec.pid
        return out

    def _down(self) -> None:
        errors = []
        for path in sorted(self.run_dir.glob("service-*.pid")):  # they use the stack: stop them first
            try:
                Child(path.stem, self.run_dir).stop()
            except StackError as exc:
                errors.append(str(exc))
        for name in ("watchdog", *reversed(ALL_COMPONENTS)):
            child = self._watchdog if name == "watchdog" else self._children[name]
            try:
                child.stop()
            except StackError as exc:
                errors.append(str(exc))
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)
        if errors:
            raise StackError("; ".join(errors))

    def stop_component(self, name: str, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with kill=True) one component and wait until it is gone."""
        self._check_name(name)
        self._children[name].stop(timeout=30, kill=kill)

    def start_component(self, name: str) -> float:
        """Start one component again on the same ports; return seconds until healthy."""
        self._check_name(name)
        t0 = time.monotonic()
        if self._children[name].running() is None:
            self._launch(name)
        return self._wait_healthy(name, t0)

    def status(self) -> dict[str, dict]:
        out = {}
        known = (self.run_dir / STATE_FILE).exists()  # ports mean something only then
        for name in self.components:
            rec = self._children[name].running()
            entry = {"state": "stopped", "pid": None,
                     "address": self._address_of(name) if known or rec else None,
                     "log": str(self._children[name].log_file)}
            if rec is not None:
                ok, reason = self._impl[name].healthy(self.ports_of(name))
                entry.update(state="running" if ok else "unhealthy", pid=rec.pid)
                if not ok:
                    entry["reason"] = reason
            out[name] = entry
        return out

    def is_up(self) -> bool:
        """True when every component of this stack runs (state file present)."""
        return (self.run_dir / STATE_FILE).exists() and \
            all(self._children[n].running() is not None for n in self.components)

    def pids(self) -> dict[str, int]:
        """PIDs of live children (what down() will stop)."""
        return {name: rec.pid for name in ALL_COMPONENTS
                if (rec := self._children[name].running()) is not None}

    def watchdog_pid(self) -> int | None:
        rec = self._watchdog.running()
        return rec.pid if rec else None

    def log_file(self, name: str) -> Path:
        self._check_name(name)
        return self._children[name].log_file

    def log_tail(self, name: str, lines: int = 40) -> str:
        self._check_name(name)
        return self._children[name].log_tail(lines)

    def __enter__(self) -> "LocalStack":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # ------------------------------------------------------------------------ internals
    def _check_name(self, name: str) -> None:
        if name not in self.components:
            raise ValueError(f"unknown component {name!r}; this stack runs {list(self.components)}")

    def _address_of(self, name: str) -> str:
        return {"kafka": self.kafka_bootstrap, "redis": self.redis_url,
                "triton": self.triton_http_url}[name]

    def _resolve_ports(self, saved: Mapping[str, int]) -> dict[str, int]:
        ports = {key: self._requested_ports.get(key, 0) or int(saved.get(key, 0))
                 for key in PORT_KEYS.values()}
        if len({p for p in ports.values() if p}) != len([p for p in ports.values() if p]):
            raise ValueError(f"stack ports must be distinct, got {ports}")
        self._pick_ports([k for k, p in ports.items() if not p], ports)
        return ports

    @staticmethod
    def _pick_ports(keys: list[str], ports: dict[str, int]) -> None:
        taken = {p for k, p in ports.items() if p and k not in keys}
        for key, port in zip(keys, free_ports(len(keys), exclude=taken)):
            ports[key] = port

    def _auto_port_keys(self, name: str) -> list[str]:
        return [key for (comp, _), key in PORT_KEYS.items()
                if comp == name and not self._requested_ports.get(key)]

    def _launch(self, name: str, repick_stale_ports: bool = False,
                port_wait_s: float | None = None) -> None:
        if repick_stale_ports:
            # A port remembered from an earlier run (not one the user asked for) may have
            # been taken by someone else since; pick a new free one instead of failing.
            stale = [k for k in self._auto_port_keys(name) if port_in_use(self._ports[k])]
            self._pick_ports(stale, self._ports)
        ports = self.ports_of(name)
        ensure_ports_free(name, {PORT_KEYS[(name, r)]: p for r, p in ports.items()},
                          wait_s=self.port_wait_s if port_wait_s is None else port_wait_s)
        impl = self._impl[name]
        impl.prepare(ports)
        argv, env = impl.command(ports)
        self._children[name].start(argv, env=env, cwd=self.run_dir)

    def _wait_healthy_retrying(self, name: str, t0: float, started_now: bool) -> float:
        """Wait healthy; if a child we just started on *free-picked* ports died because one
        was grabbed by another process in between (bind race), retry on new ports."""
        for attempt in range(3):
            try:
                return self._wait_healthy(name, t0)
            except StackError as exc:
                auto = self._auto_port_keys(name)
                lost_race = started_now and len(auto) == len(self.ports_of(name)) \
                    and self._children[name].running() is None \
                    and any(s in str(exc) for s in BIND_FAILURES)
                if not lost_race or attempt == 2:
                    raise
                self._pick_ports(auto, self._ports)
                self._launch(name)
                self._save_state()
        raise AssertionError("unreachable")

    def _wait_healthy(self, name: str, t0: float) -> float:
        child, impl = self._children[name], self._impl[name]
        deadline = t0 + self.ready_timeout
        reason = "not checked yet"
        while True:
            if child.running() is None:
                raise StackError(
                    f"{name} exited while starting (exit code {child.exit_code()}); "
                    f"last lines of {child.log_file}:\n{child.log_tail(30)}")
            ok, reason = impl.healthy(self.ports_of(name))
            if ok:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} not healthy after {self.ready_timeout:.0f}s ({reason}); "
                    f"last lines of {child.log_file}:\n{child.log_tail(30)}")
            time.sleep(0.2)

    @contextlib.contextmanager
    def _lock(self):
        with open(self.run_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _start_watchdog(self) -> None:
        me = os.getpid()
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package_root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self._watchdog.start([sys.executable, "-m", "relstream.stack.watchdog", str(me),
                              str(process_start_ticks(me)), str(self.run_dir)], env=env)

    def _load_state(self) -> dict:
        try:
            return json.loads((self.run_dir / STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_state(self) -> None:
        state = {
            "components": list(self.components),
            "ports": self._ports,
            "addresses": self.addresses(),
            "model_repository": str(self.model_repository),
            "config": self.config_overrides(),
            "pids": self.pids(),
        }
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.run_dir / STATE_FILE)
