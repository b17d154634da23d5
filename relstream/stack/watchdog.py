"""Stops a stack's children when the process that owns them dies without calling down().

Started by LocalStack(stop_with_owner=True) (the pytest fixtures use it), so a test session
that is killed outright still leaves no server behind.

    python3 -m relstream.stack.watchdog OWNER_PID OWNER_START_TICKS RUN_DIR
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .process import Child, is_alive

COMPONENTS = ("triton", "redis", "kafka")


def watch(owner_pid: int, owner_ticks: int, run_dir: Path, poll_s: float = 0.5) -> None:
    while is_alive(owner_pid, owner_ticks):
        time.sleep(poll_s)
    print(f"owner {owner_pid} is gone; stopping the stack in {run_dir}", flush=True)
    for name in COMPONENTS:
        try:
            Child(name, run_dir).stop(timeout=15)
        except Exception as exc:  # keep stopping the others
            print(f"could not stop {name}: {exc}", flush=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
