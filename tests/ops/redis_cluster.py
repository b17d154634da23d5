"""A real 3-node Redis Cluster for tests: redis-server processes created with redis-cli.

``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`` assigns the slots and joins
the nodes, exactly as an operator would; the fixture waits for ``cluster_state:ok`` on every
node and stops the servers it started, by PID.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from relstream.stack import free_port

HOST = "127.0.0.1"


class LocalRedisCluster:
    def __init__(self, base_dir: Path, nodes: int = 3):
        self.base_dir = Path(base_dir)
        self.n = nodes
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.ports[0]}/0"

    def _cli(self, port: int, *args: str, timeout: float = 30) -> str:
        out = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), *args], capture_output=True,
                             text=True, timeout=timeout)
        return out.stdout + out.stderr

    def start(self) -> "LocalRedisCluster":
        taken: set[int] = set()

        def pick() -> int:
            while True:
                p = free_port()
                if p not in taken:
                    taken.add(p)
                    return p

        try:
            for _ in range(self.n):
                port, bus = pick(), pick()  # explicit bus port: no reliance on port + 10000 being free
                d = self.base_dir / f"node-{port}"
                d.mkdir(parents=True)
                self.ports.append(port)
                self.procs.append(subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", HOST, "--cluster-enabled", "yes",
                     "--cluster-port", str(bus), "--cluster-config-file", str(d / "nodes.conf"),
                     "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no", "--dir", str(d),
                     "--daemonize", "no", "--logfile", str(d / "redis.log")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
            for port in self.ports:
                self._wait(lambda p=port: self._cli(p, "ping").strip() == "PONG", f"node {port} answers PING")
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *[f"{HOST}:{p}" for p in self.ports],
                 "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self._wait(lambda: all("cluster_state:ok" in self._cli(p, "cluster", "info") for p in self.ports),
                       "cluster_state:ok on every node")
            return self
        except BaseException:
            self.stop()
            raise

    def _wait(self, ok, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            dead = [p.args[2] for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"redis-server exited on port(s) {dead} while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster: no {what} after {timeout}s")
            time.sleep(0.1)

    def keys_per_node(self) -> dict[int, int]:
        return {p: int(self._cli(p, "dbsize").strip() or 0) for p in self.ports}

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs = []
