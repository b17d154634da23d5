"""Loopback port helpers."""
from __future__ import annotations

import socket
import time

HOST = "127.0.0.1"


class PortInUseError(RuntimeError):
    """A configured port is taken by a process that is not part of this stack."""


def free_port() -> int:
    """A port the kernel considers free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def free_ports(n: int, exclude: set[int] = frozenset()) -> list[int]:
    """`n` distinct free ports (all held open together while picking, so none repeats)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return ports


def port_in_use(port: int) -> bool:
    """True if something listens on (or holds) 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def ensure_ports_free(owner: str, ports: dict[str, int], wait_s: float = 0.0) -> None:
    """Raise PortInUseError naming the component, the port role and the port.

    wait_s: keep checking that long first -- a server killed a moment ago releases its
    listening sockets slightly after its process is gone.
    """
    deadline = time.monotonic() + wait_s
    while True:
        taken = [f"{role}={port}" for role, port in ports.items() if port_in_use(port)]
        if not taken or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if taken:
        raise PortInUseError(
            f"cannot start {owner}: port {', '.join(taken)} already in use on {HOST} "
            f"(stop whatever holds it, or choose another port in the `stack.ports` config, "
            f"or use 0 to pick a free port)")
