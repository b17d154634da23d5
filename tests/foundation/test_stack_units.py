"""Pure pieces of the stack: child supervision, jar cache verification, ports, CLI wiring."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relstream.stack import kafka_jars
from relstream.stack.components import min_heap
from relstream.stack.ports import PortInUseError, ensure_ports_free, free_port, port_in_use
from relstream.stack.process import Child, is_alive, process_group_members


# ------------------------------------------------------------------------------ processes
def test_child_start_stop_by_pid_including_its_group(tmp_path):
    child = Child("sleeper", tmp_path)
    # the shell forks a grandchild; stopping the child must take the whole group down
    rec = child.start(["/bin/sh", "-c", "sleep 30 & echo started; wait"])
    assert child.running() is not None and rec.alive()
    assert json.loads(child.pid_file.read_text())["pid"] == rec.pid
    deadline = time.monotonic() + 5
    while len(process_group_members(rec.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(process_group_members(rec.pid)) >= 2
    child.stop(timeout=5)
    assert not is_alive(rec.pid) and process_group_members(rec.pid) == []
    assert not child.pid_file.exists()
    assert "started" in child.log_tail()


def test_stale_pid_file_with_recycled_pid_is_never_signalled(tmp_path):
    # our own test process stands in for "some unrelated process that got the PID"
    stale = {"name": "kafka", "pid": os.getpid(), "start_ticks": 1, "argv": ["java"],
             "log": str(tmp_path / "x.log")}
    child = Child("kafka", tmp_path)
    child.pid_file.write_text(json.dumps(stale))
    assert child.running() is None          # start time differs -> not ours
    assert not child.pid_file.exists()      # stale file cleaned
    child.stop()                            # nothing to stop, and we are still alive
    assert is_alive(os.getpid())


def test_stop_escalates_to_sigkill(tmp_path):
    child = Child("stubborn", tmp_path)
    rec = child.start([sys.executable, "-c",
                       "import signal,time,sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                       "print('ready', flush=True); time.sleep(60)"])
    deadline = time.monotonic() + 10
    while "ready" not in child.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    child.stop(timeout=0.5)
    assert not is_alive(rec.pid)
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------------------------ ports
def test_port_helpers():
    port = free_port()
    assert not port_in_use(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        assert port_in_use(port)
        with pytest.raises(PortInUseError, match=f"kafka: port broker={port} already in use"):
            ensure_ports_free("kafka", {"broker": port})


def test_min_heap():
    assert min_heap("512m") == "128m"
    assert min_heap("1g") == "256m"
    assert min_heap("32m") == "16m"


# ------------------------------------------------------------------------------- jar cache
def _fake_home(tmp_path, version="9.9.9"):
    home = tmp_path / "kafka" / version
    jars = home / "jars"
    jars.mkdir(parents=True)
    (jars / f"kafka_2.13-{version}.jar").write_bytes(b"PK broker")
    (jars / "kafka-clients.jar").write_bytes(b"PK clients" * 100)
    kafka_jars.write_manifest(jars, version)
    return home


def test_jar_manifest_verification_detects_damage(tmp_path):
    home = _fake_home(tmp_path)
    assert kafka_jars.verify(home, "9.9.9") == []
    assert kafka_jars.verify(home, "1.0.0")  # wrong version
    jar = home / "jars" / "kafka-clients.jar"
    jar.write_bytes(b"PK clients" * 50)  # truncated download
    assert any("checksum" in p for p in kafka_jars.verify(home, "9.9.9"))
    jar.write_bytes(b"PK clients" * 100)
    (home / "jars" / "extra.jar").write_bytes(b"x")
    assert any("unexpected jar extra.jar" in p for p in kafka_jars.verify(home, "9.9.9"))
    (home / "jars" / "extra.jar").unlink()
    jar.unlink()
    assert any("missing" in p for p in kafka_jars.verify(home, "9.9.9"))
    (home / "manifest.json").unlink()
    assert kafka_jars.verify(home, "9.9.9") == [f"{home / 'manifest.json'} missing"]


def test_cached_jars_are_used_without_maven_and_bad_cache_is_refused(tmp_path):
    home = _fake_home(tmp_path)
    assert kafka_jars.ensure_kafka_jars("9.9.9", root=tmp_path, mvn="no-such-mvn") == home / "jars"
    (home / "jars" / "kafka-clients.jar").write_bytes(b"corrupt")
    with pytest.raises(kafka_jars.JarCacheError, match="not cached"):
        kafka_jars.ensure_kafka_jars("9.9.9", root=tmp_path, offline=True)
    with pytest.raises(kafka_jars.JarCacheError, match="mvn"):
        kafka_jars.ensure_kafka_jars("9.9.9", root=tmp_path, mvn="no-such-mvn")


def test_real_jar_cache_is_complete():
    """The cache `make setup` filled verifies (the broker jar and its dependencies)."""
    home = kafka_jars.kafka_home()
    if not home.is_dir():
        pytest.skip("Kafka jars not cached yet (make setup)")
    assert kafka_jars.verify(home, kafka_jars.KAFKA_VERSION) == []
    names = {p.name for p in (home / "jars").glob("*.jar")}
    assert f"kafka_2.13-{kafka_jars.KAFKA_VERSION}.jar" in names
    assert any(n.startswith("log4j-slf4j-impl") for n in names)


# -------------------------------------------------------------------------------------- CLI
REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_cli(*args, env=None, **kw):
    # run this checkout's code even where another checkout is pip-installed
    env = {**(env or os.environ), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "relstream.cli", *args],
                          capture_output=True, text=True, timeout=60, env=env, **kw)


@pytest.mark.parametrize("args", [
    [], ["stack"], ["stack", "up"], ["stack", "down"], ["stack", "status"], ["stack", "logs"],
    ["stack", "env"], ["config"], ["config", "show"], ["config", "check"], ["smoke"]])
def test_help_everywhere(args, capsys):
    from relstream.cli import main
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--help"])
    assert exit_.value.code == 0
    assert "usage: relstream" in capsys.readouterr().out


def test_help_as_module_subprocess():
    proc = _run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "stack" in proc.stdout and "smoke" in proc.stdout


def test_cli_config_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stack: {ports: {redis: many}}\n")
    proc = _run_cli("--config", str(bad), "config", "check")
    assert proc.returncode == 2
    assert "stack.ports.redis" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_config_show_masks_secrets(tmp_path):
    env = {**os.environ, "RELSTREAM_KAFKA_SASL_PASSWORD": "hunter2",
           "RELSTREAM_REDIS_PASSWORD": "hunter3"}
    proc = _run_cli("config", "show", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hunter" not in proc.stdout and "sasl.password: '**********'" in proc.stdout


def test_plugins_register_and_only_their_own_absence_is_skipped(tmp_path, monkeypatch):
    import argparse

    from relstream import cli

    pkg = tmp_path / "fakeplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('fake-cmd', help='x')\n"
        "    p.set_defaults(func=lambda args: 7)\n")
    (pkg / "broken_cli.py").write_text("import missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    loaded = cli.load_plugins(sub, ["fakeplug.cli", "no_such_pkg.cli", "fakeplug.absent_cli"])
    assert loaded == ["fakeplug.cli"]
    assert parser.parse_args(["fake-cmd"]).func(None) == 7
    # the plugin exists but one of *its* imports is missing: that must surface
    with pytest.raises(ModuleNotFoundError, match="missing_dependency_xyz"):
        cli.load_plugins(sub, ["fakeplug.broken_cli"])


def test_kafka_cluster_id_never_looks_like_a_flag():
    from relstream.stack.components import _kafka_cluster_id
    ids = {_kafka_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_core_commands_skip_plugins_others_load_them():
    from relstream.cli import _first_command
    assert _first_command(["--config", "x.yaml", "stack", "up"]) == "stack"
    assert _first_command(["--config=x.yaml", "ingest", "--help"]) == "ingest"
    assert _first_command(["--help"]) is None
