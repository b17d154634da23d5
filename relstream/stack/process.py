"""Child processes: the one wrapper (:class:`Process`) and the stack's supervised servers (:class:`Child`).

:class:`Process` is every child relstream starts and owns while it runs - the demo's services,
the tests' and benchmarks' `relstream ingest|score|serve` - in its own session (a Ctrl-C in the
caller's terminal does not reach it, and its whole group stops together), output into a log file.
:class:`Child` is a stack server that outlives the command that started it: a Process plus a PID
file, identified by its PID *and* its kernel start time, so a recycled PID is never mistaken for
one of ours (and never signalled).
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence


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


def _proc_children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in out]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (by /proc children lists)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_proc_children(p))
    return seen


def rss_bytes(pid: int, tree: bool = True) -> int:
    """Resident memory of ``pid`` (and its descendants)."""
    total = 0
    for p in (process_tree(pid) if tree else [pid]):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


class ProcessExited(RuntimeError):
    """The process ended while it was waited for; the message holds the end of its log."""


class Process:
    """One child process in its own session, stdout and stderr appended to ``log_path`` (stdout to
    ``out_path`` instead when given: a command whose output is read back).

    ``stop()``: SIGTERM to its group (the relstream services finish the batch in hand), SIGKILL
    after a timeout; ``kill()``: SIGKILL to the group (a crash)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: str | Path, *,
                 env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 out_path: str | Path | None = None):
        self.name, self.argv = name, [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.out_path = Path(out_path) if out_path is not None else None
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "Process":
        if self.alive:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            log = files.enter_context(open(self.log_path, "ab"))
            log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {shlex.join(self.argv)}\n".encode())
            log.flush()
            out: IO | int = subprocess.STDOUT
            if self.out_path is not None:
                out = files.enter_context(open(self.out_path, "ab"))
            self.proc = subprocess.Popen(self.argv, stdout=log if out is subprocess.STDOUT else out,
                                         stderr=subprocess.STDOUT if out is subprocess.STDOUT else log,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                         start_new_session=True, close_fds=True)
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL to the whole group: no drain, no commit (a crash)."""
        if self.alive:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(timeout_s)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (graceful), SIGKILL after ``timeout_s``; the exit code."""
        if self.proc is None:
            return None
        if self.alive:
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.signal_group(signal.SIGKILL)  # anything left in the group (a child that ignored SIGTERM)
        return self.proc.returncode

    def rss(self) -> int:
        return rss_bytes(self.proc.pid) if self.alive else 0

    def tail(self, lines: int = 25) -> str:
        return tail(self.log_path, lines)

    def output(self) -> str:
        """What it wrote to ``out_path`` (its log when there is none)."""
        path = self.out_path or self.log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def log_count(self, needle: str) -> int:
        return self.log_path.read_text(errors="replace").count(needle) if self.log_path.exists() else 0

    def _check(self) -> None:
        if self.proc is not None and not self.alive:
            raise ProcessExited(f"{self.name} exited with code {self.proc.returncode}:\n{self.tail(40)}")

    def wait_for(self, ready: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
        """Until ``ready()``; ProcessExited if the process ends first, TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check()
            if ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what} not within {timeout_s:.0f}s:\n{self.tail(40)}")
            time.sleep(poll_s)

    def wait_for_log(self, needle: str, timeout_s: float, count: int = 1) -> None:
        """Until ``needle`` occurs ``count`` times in the log (restarts append to it)."""
        self.wait_for(lambda: self.log_count(needle) >= count, timeout_s, f"{needle!r} in the log")

    def wait_http(self, url: str, timeout_s: float = 60.0) -> str:
        """Until ``url`` answers 2xx; its body."""
        body: list[str] = []

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body.append(resp.read().decode())
                    return True
            except OSError:
                return False
        self.wait_for(answers, timeout_s, f"{url} answering", poll_s=0.2)
        return body[-1]


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
        self._process: Process | None = None

    @property
    def _popen(self) -> subprocess.Popen | None:
        return self._process.proc if self._process is not None else None

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
        # own session: the whole group (e.g. Triton's backend stubs) can be stopped together
        self._process = Process(self.name, argv, self.log_file, env=env, cwd=cwd).start()
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
