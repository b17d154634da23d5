"""Shared pytest fixtures: one real local stack per session, plus small client helpers.

Integration tests talk to real servers started here (Kafka KRaft, Redis, Triton) on free
127.0.0.1 ports. Fixtures for tests to use:

    stack            session LocalStack (kafka, redis, triton), smoke model in its repository
    stack_factory    make_stack(components=("redis",), **kw) -> a private, already-up LocalStack
                     (for fault tests that kill servers); stopped at test end
    kafka_admin      confluent_kafka AdminClient for the session stack
    kafka_client_config    dict: base librdkafka settings (bootstrap) for producers/admin
    kafka_consumer_config  dict: consumer settings (short session timeout, earliest); add group.id
    new_topic        new_topic(name_prefix, partitions=1, config=None) -> unique topic name
    redis_client     redis.Redis on the session stack, DB flushed before each test
    kill_rounds      int from --kill-rounds (default 5)
    soak             bool from --soak

Tests that use `stack` (directly or through these fixtures) get the `integration` marker.
"""
from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path

import pytest

# Subprocesses the tests start (ingest, score, serve, demo stages) must import this checkout's
# code, not whatever checkout an editable install points at.
REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)

from relstream.stack import LocalStack, install_smoke_model
from relstream.stack.process import is_alive, process_group_members

STACK_FIXTURES = {"stack", "kafka_admin", "kafka_client_config", "kafka_consumer_config",
                  "new_topic", "redis_client", "stack_factory"}


def pytest_addoption(parser):
    group = parser.getgroup("relstream")
    group.addoption("--kill-rounds", type=int, default=5,
                    help="rounds of kill/restart in fault tests (default 5)")
    group.addoption("--soak", action="store_true", default=False,
                    help="run long soak tests (marker `soak`)")


def pytest_collection_modifyitems(config, items):
    skip_soak = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if "soak" in item.keywords and not config.getoption("--soak"):
            item.add_marker(skip_soak)


@pytest.fixture(scope="session")
def kill_rounds(pytestconfig) -> int:
    return pytestconfig.getoption("--kill-rounds")


@pytest.fixture(scope="session")
def soak(pytestconfig) -> bool:
    return pytestconfig.getoption("--soak")


def _assert_stopped(pids: dict[str, tuple[int, int]]) -> None:
    left = {name: pid for name, (pid, ticks) in pids.items()
            if is_alive(pid, ticks) or process_group_members(pid)}
    assert not left, f"stack processes left running after down(): {left}"


def _started(st: LocalStack) -> dict[str, tuple[int, int]]:
    out = {}
    for name, child in [*st._children.items(), ("watchdog", st._watchdog)]:
        rec = child.record()
        if rec is not None:
            out[name] = (rec.pid, rec.start_ticks)
    return out


def close_leftover_kafka_clients() -> int:
    """Close every confluent-kafka producer and consumer still alive (tests are over)."""
    from confluent_kafka import Consumer, KafkaException, Producer

    gc.collect()
    closed = 0
    for obj in gc.get_objects():
        # type(), not isinstance(): some objects in the heap warn when their __class__ is read
        if issubclass(type(obj), (Producer, Consumer)):
            try:
                obj.close()
                closed += 1
            except (RuntimeError, KafkaException):  # already closed; a fenced transaction
                pass
    return closed


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> LocalStack:
    run_dir = tmp_path_factory.mktemp("stack")
    # stop_with_owner: a watchdog stops the servers even if this session is killed outright
    st = LocalStack(run_dir, run_dir / "models", stop_with_owner=True)
    install_smoke_model(st.model_repository)
    try:
        took = st.up()
    except BaseException:
        st.down()
        raise
    print(f"\n[relstream stack] healthy in {max(took.values()):.1f}s: {st.addresses()}")
    yield st
    # Kafka clients that tests left open are closed here, while the broker still answers; at
    # interpreter exit they would print "Connection refused" lines after the summary
    close_leftover_kafka_clients()
    started = _started(st)
    st.down()
    _assert_stopped(started)


@pytest.fixture
def stack_factory(tmp_path):
    """Private stacks for tests that stop/kill servers (so the session stack stays intact)."""
    made: list[LocalStack] = []

    def make(components=("kafka", "redis", "triton"), **kwargs) -> LocalStack:
        run_dir = tmp_path / f"stack{len(made)}"
        kwargs.setdefault("model_repository", run_dir / "models")
        kwargs.setdefault("stop_with_owner", True)
        st = LocalStack(run_dir, components=components, **kwargs)
        made.append(st)
        st.up()
        return st

    yield make
    gc.collect()  # abandoned clients go while their broker is up
    for st in reversed(made):
        started = _started(st)
        st.down()
        _assert_stopped(started)


@pytest.fixture(scope="session")
def kafka_client_config(stack) -> dict:
    """Base librdkafka settings (producers, admin) for the session stack; copy and extend."""
    return {"bootstrap.servers": stack.kafka_bootstrap}


@pytest.fixture(scope="session")
def kafka_consumer_config(kafka_client_config) -> dict:
    """Consumer settings; add group.id. librdkafka's 45 s session timeout slows rejoins."""
    return {**kafka_client_config, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
            "auto.offset.reset": "earliest"}


@pytest.fixture(scope="session")
def kafka_admin(stack):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": stack.kafka_bootstrap})


@pytest.fixture
def new_topic(kafka_admin):
    """Factory: create a uniquely named topic, wait until it exists; deleted after the test."""
    from confluent_kafka.admin import NewTopic
    created: list[str] = []

    def make(name_prefix: str = "t", partitions: int = 1, config: dict | None = None) -> str:
        name = f"{name_prefix}-{uuid.uuid4().hex[:10]}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1,
                      config={k: str(v) for k, v in (config or {}).items()})],
            operation_timeout=30)
        futures[name].result(timeout=30)
        created.append(name)
        _wait_topic_visible(kafka_admin, name, partitions)
        return name

    yield make
    if created:
        for fut in kafka_admin.delete_topics(created, operation_timeout=30).values():
            try:
                fut.result(timeout=30)
            except Exception:  # deletion is best effort; the broker dies with the session
                pass


def _wait_topic_visible(admin, name: str, partitions: int, timeout: float = 30.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=name, timeout=5)
        topic = md.topics.get(name)
        if topic is not None and topic.error is None and len(topic.partitions) == partitions \
                and all(p.leader >= 0 for p in topic.partitions.values()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} not ready after {timeout}s")


@pytest.fixture
def redis_client(stack):
    import redis
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def smoke_model_dir() -> Path:
    from relstream.stack.smoke import SMOKE_MODEL_SOURCE
    return SMOKE_MODEL_SOURCE
