"""Supervised child processes: start with a log file and a PID file, check, stop by PID.

A child is identified by its PID *and* its kernel start time, so a recycled PID is never
mistaken for one of ours (and never signalled).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """A component could not be started, became unhealthy or could not be stopped."""


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces; it is wrapped in parentheses.
    return raw[raw.rfind(")") + 2:].split()


def process_start_ticks(pid: int) -> int | None:
    """Kernel start time of `pid` in clock ticks (field 22 of /proc/PID/stat)."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True while `pid` runs (zombies count as dead) and, if given, started at `start_ticks`."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(fields[19]) == start_ticks


def process_group_members(pgid: int) -> list[int]:
    """Live PIDs whose process group is `pgid` (our children run in their own session)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class ChildRecord:
    """What the PID file stores about one started child."""

    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    log: str

    def alive(self) -> bool:
        return is_alive(self.pid, self.start_ticks)


class Child:
    """One supervised server process with `<dir>/<name>.pid` and `<dir>/<name>.log`."""

    def __init__(self, name: str, run_dir: Path):
        self.name = name
        self.pid_file = run_dir / f"{name}.pid"
        self.log_file = run_dir / "logs" / f"{name}.log"
        self._popen: subprocess.Popen | None = None

    # -- state ---------------------------------------------------------------------------
    def record(self) -> ChildRecord | None:
        try:
            return ChildRecord(**json.loads(self.pid_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def running(self) -> ChildRecord | None:
        """The record of our live child, or None (a stale PID file is removed)."""
        rec = self.record()
        if rec is None:
            return None
        if self._popen is not None:
            self._popen.poll()  # reap if it died, so it does not linger as a zombie
        if rec.alive():
            return rec
        self.pid_file.unlink(missing_ok=True)
        return None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)

    # -- control -------------------------------------------------------------------------
    def start(self, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> ChildRecord:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: "
                      f"{' '.join(argv)}\n".encode())
            log.flush()
            # Own session: a Ctrl-C in the caller's terminal does not hit the servers, and
            # the whole group (e.g. Triton's backend stubs) can be stopped together.
            self._popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True, close_fds=True)
        ticks = process_start_ticks(self._popen.pid) or 0
        rec = ChildRecord(self.name, self._popen.pid, ticks, list(argv), str(self.log_file))
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(json.dumps(rec.__dict__))
        tmp.replace(self.pid_file)
        return rec

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def signal(self, sig: int) -> None:
        rec = self.running()
        if rec is None:
            return
        try:
            os.killpg(rec.pid, sig)  # the child leads its own process group
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(rec.pid, sig)

    def stop(self, timeout: float = 15.0, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) our child's process group; escalate to SIGKILL after timeout."""
        rec = self.running()
        if rec is None:
            self.pid_file.unlink(missing_ok=True)
            return
        self.signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._gone(rec):
                break
            time.sleep(0.05)
        else:
            self.signal(signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not self._gone(rec):
                time.sleep(0.05)
        if not self._gone(rec):
            raise StackError(f"{self.name} (pid {rec.pid}) did not exit after SIGKILL")
        self.pid_file.unlink(missing_ok=True)

    def _gone(self, rec: ChildRecord) -> bool:
        if self._popen is not None and self._popen.pid == rec.pid:
            self._popen.poll()
        return not rec.alive() and not process_group_members(rec.pid)
