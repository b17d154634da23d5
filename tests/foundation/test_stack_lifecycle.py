"""LocalStack lifecycle on private stacks: idempotent up, down leaves nothing, faults, ports."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relstream.stack import (ComponentSettings, LocalStack, PortInUseError, StackError,
                             free_port)
from relstream.stack.process import is_alive, process_group_members

REPO_ROOT = Path(__file__).resolve().parents[2]


def _all_pids_gone(pids: dict[str, int]) -> bool:
    return all(not is_alive(pid) and not process_group_members(pid) for pid in pids.values())


def test_full_stack_up_is_fast_idempotent_and_down_leaves_nothing(tmp_path, capsys):
    st = LocalStack(tmp_path / "run", tmp_path / "models")
    try:
        t0 = time.monotonic()
        took = st.up()
        total = time.monotonic() - t0
        with capsys.disabled():
            print(f"\n[stack up, jars cached] healthy in {total:.2f}s "
                  f"(per component: { {k: round(v, 2) for k, v in took.items()} })")
        assert total < 60, f"stack up took {total:.1f}s (limit 60s once jars are cached)"
        pids = st.pids()
        assert set(pids) == {"kafka", "redis", "triton"}
        assert all(s["state"] == "running" for s in st.status().values())

        # a second up, even from a fresh object on the same run dir, starts no second copy
        again = LocalStack(tmp_path / "run")
        again.up()
        assert again.pids() == pids
        assert again.kafka_bootstrap == st.kafka_bootstrap
        assert again.triton_http_url == st.triton_http_url
        assert again.model_repository == st.model_repository
    finally:
        pids = st.pids()
        st.down()
    deadline = time.monotonic() + 10
    while not _all_pids_gone(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _all_pids_gone(pids), f"left behind: {pids}"
    assert not (tmp_path / "run" / "stack.json").exists()
    assert not list((tmp_path / "run").glob("*.pid"))
    assert all(s["state"] == "stopped" for s in st.status().values())


def test_stop_and_start_component_keeps_its_port(stack_factory):
    st = stack_factory(components=("redis",))
    import redis
    url = st.redis_url
    redis.Redis.from_url(url).set("k", "v")
    old_pid = st.pids()["redis"]
    st.stop_component("redis", kill=True)
    assert "redis" not in st.pids()
    assert st.status()["redis"]["state"] == "stopped"
    took = st.start_component("redis")
    assert st.redis_url == url and st.pids()["redis"] != old_pid
    assert redis.Redis.from_url(url).ping()
    assert took < 30


def test_redis_persistence_option_survives_restart(stack_factory):
    st = stack_factory(components=("redis",),
                       settings=ComponentSettings(redis_persistence=True))
    import redis
    client = redis.Redis.from_url(st.redis_url)
    client.set("durable", "yes")
    st.stop_component("redis")  # SIGTERM: redis flushes the AOF on shutdown
    st.start_component("redis")
    assert redis.Redis.from_url(st.redis_url).get("durable") == b"yes"


def test_watchdog_stops_servers_when_owner_dies_without_down(tmp_path):
    script = f"""
import os, sys
sys.path.insert(0, {str(REPO_ROOT)!r})
from pathlib import Path
from relstream.stack import LocalStack
st = LocalStack(Path({str(tmp_path / 'run')!r}), components=("redis",), stop_with_owner=True)
st.up()
print(st.pids()["redis"], st.watchdog_pid(), flush=True)
os._exit(0)   # dies without down()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    redis_pid, watchdog_pid = map(int, proc.stdout.split())
    deadline = time.monotonic() + 20
    while (is_alive(redis_pid) or is_alive(watchdog_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_alive(redis_pid), "redis outlived its owner"
    assert not is_alive(watchdog_pid)
    assert "owner" in (tmp_path / "run" / "logs" / "watchdog.log").read_text()


def test_port_in_use_is_reported_clearly(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        st = LocalStack(tmp_path / "run", components=("redis",), ports={"redis": port},
                        port_wait_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(PortInUseError) as err:
            st.up()
        assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert f"redis={port}" in msg and "already in use" in msg
    assert st.pids() == {}


def test_child_that_dies_is_reported_with_its_log_tail(tmp_path):
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot open config (simulated)'\nexit 7\n")
    fake.chmod(0o755)
    st = LocalStack(tmp_path / "run", components=("redis",),
                    settings=ComponentSettings(redis_server=str(fake)))
    with pytest.raises(StackError) as err:
        st.up()
    msg = str(err.value)
    assert "redis exited while starting" in msg
    assert "exit code 7" in msg
    assert "FATAL: cannot open config (simulated)" in msg
    assert st.pids() == {}


def test_lost_port_race_on_free_ports_is_retried_on_new_ports(tmp_path):
    # first start fails the way redis does when another process grabbed the port in between
    mark = tmp_path / "failed-once"
    fake = tmp_path / "racy-redis"
    fake.write_text(f"""#!/bin/sh
if [ ! -e {mark} ]; then
  touch {mark}
  echo "Warning: Could not create server TCP listening socket 127.0.0.1:$2: bind: Address already in use"
  exit 1
fi
exec redis-server "$@"
""")
    fake.chmod(0o755)
    st = LocalStack(tmp_path / "run", components=("redis",),
                    settings=ComponentSettings(redis_server=str(fake)))
    first_port = st.ports["redis"]
    try:
        st.up()
        assert mark.exists()
        assert st.ports["redis"] != first_port
        import redis
        assert redis.Redis.from_url(st.redis_url).ping()
    finally:
        st.down()


def test_explicit_port_is_not_silently_changed(tmp_path):
    fake = tmp_path / "failing-redis"
    fake.write_text("#!/bin/sh\necho 'bind: Address already in use'\nexit 1\n")
    fake.chmod(0o755)
    port = free_port()
    st = LocalStack(tmp_path / "run", components=("redis",), ports={"redis": port},
                    settings=ComponentSettings(redis_server=str(fake)))
    with pytest.raises(StackError, match="Address already in use"):
        st.up()
    assert st.ports["redis"] == port


def test_readiness_timeout_names_component_and_reason(tmp_path):
    # a "server" that runs but never answers PING
    fake = tmp_path / "silent-redis"
    fake.write_text("#!/bin/sh\necho 'listening nowhere'\nexec sleep 60\n")
    fake.chmod(0o755)
    st = LocalStack(tmp_path / "run", components=("redis",), ready_timeout=2,
                    settings=ComponentSettings(redis_server=str(fake)))
    with pytest.raises(StackError) as err:
        st.up()
    assert "redis not healthy after 2s" in str(err.value)
    assert "listening nowhere" in str(err.value)
    assert st.pids() == {}  # the failed up stopped what it started


def test_unknown_component_and_port_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="zookeeper"):
        LocalStack(tmp_path, components=("zookeeper",))
    with pytest.raises(ValueError, match="kafka_port"):
        LocalStack(tmp_path, ports={"kafka_port": 1})


def test_cli_stack_up_status_down_leave_nothing(tmp_path):
    """The CLI path: separate processes share the stack through the run directory."""
    env = {**os.environ, "RELSTREAM__RUN_DIR": str(tmp_path / "run"),
           "RELSTREAM__STACK__COMPONENTS": "[redis]", "PYTHONPATH": str(REPO_ROOT)}
    cli = [sys.executable, "-m", "relstream.cli"]
    up = subprocess.run(cli + ["stack", "up"], env=env, capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "redis" in up.stdout and "healthy in" in up.stdout
    try:
        status = subprocess.run(cli + ["stack", "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        import json
        pid = json.loads(status.stdout)["redis"]["pid"]
        assert is_alive(pid)
        envout = subprocess.run(cli + ["stack", "env"], env=env, capture_output=True,
                                text=True, timeout=60, cwd=tmp_path)
        assert "export RELSTREAM__REDIS__URL=redis://127.0.0.1:" in envout.stdout
        # other commands on the same run_dir see the stack's addresses
        from relstream.config import load_config
        cfg = load_config(env={"RELSTREAM__RUN_DIR": str(tmp_path / "run")})
        assert cfg.redis.url == json.loads(status.stdout)["redis"]["address"]
    finally:
        down = subprocess.run(cli + ["stack", "down"], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert not is_alive(pid) and not process_group_members(pid)
    status = subprocess.run(cli + ["stack", "status"], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert status.returncode == 3 and "stopped" in status.stdout
    envout = subprocess.run(cli + ["stack", "env"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert envout.returncode == 1 and "not running" in envout.stderr


def test_missing_prerequisite_is_one_clear_message(tmp_path):
    """No redis-server on PATH: one message naming it and the install command, no traceback."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bindir), "RELSTREAM__RUN_DIR": str(tmp_path / "run"),
           "RELSTREAM__STACK__COMPONENTS": "[redis]", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "relstream.cli", "stack", "up"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "redis-server" in proc.stderr and "apt-get install -y redis-server" in proc.stderr


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_kafka_restart_on_same_port_keeps_data_and_committed_offsets(stack_factory, kill):
    from confluent_kafka import Consumer, Producer
    st = stack_factory(components=("kafka",))
    bootstrap = st.kafka_bootstrap
    topic = "restart-check"
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(6):
        producer.produce(topic, value=f"m{i}".encode())
    assert producer.flush(30) == 0

    conf = {"bootstrap.servers": bootstrap, "group.id": "restart-group",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": 6000}
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < 4 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            seen.append(msg.value())
            consumer.commit(message=msg, asynchronous=False)
    consumer.close()
    assert seen == [b"m0", b"m1", b"m2", b"m3"]
    del producer  # no client left retrying against the stopped broker

    st.stop_component("kafka", kill=kill)
    took = st.start_component("kafka")
    assert st.kafka_bootstrap == bootstrap
    print(f"\n[kafka restart after {'SIGKILL' if kill else 'SIGTERM'}] healthy in {took:.1f}s")

    consumer = Consumer(conf)
    consumer.subscribe([topic])
    rest = []
    deadline = time.monotonic() + 60
    while len(rest) < 2 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            rest.append(msg.value())
    consumer.close()
    assert rest == [b"m4", b"m5"]


def test_concurrent_ups_on_one_run_dir_start_one_copy(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    stacks = [LocalStack(tmp_path / "run", components=("redis",)) for _ in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda s: s.up(), stacks))
        pids = {s.pids()["redis"] for s in stacks}
        assert len(pids) == 1
        assert len({s.redis_url for s in [LocalStack(tmp_path / "run", components=("redis",))]
                    + stacks[:1]}) == 1
    finally:
        stacks[0].down()
    assert stacks[1].pids() == {}
