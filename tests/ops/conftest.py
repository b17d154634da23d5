"""Fixtures of the operations tests."""
from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A real 3-node Redis Cluster (redis-server processes, created with redis-cli --cluster create)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli not installed")
    from tests.ops.redis_cluster import LocalRedisCluster
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs), "redis-server processes left running"


def pytest_collection_modifyitems(config, items):
    """`slow` tests of this directory run only when asked: -m slow (or RELSTREAM_SLOW=1)."""
    import os

    wanted = "slow" in (config.getoption("markexpr") or "") or os.environ.get("RELSTREAM_SLOW") == "1"
    if wanted:
        return
    skip = pytest.mark.skip(reason="slow ops test: run with -m slow or RELSTREAM_SLOW=1")
    for item in items:
        if "slow" in item.keywords and "/tests/ops/" in str(item.fspath):
            item.add_marker(skip)
