"""What the window-store suites share: an injectable clock and one factory per implementation."""
from __future__ import annotations

import uuid

import pytest

from rti_store.memory import MemoryWindowStore
from rti_store.redis_store import RedisWindowStore


class FakeClock:
    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def store_factory(request):
    """``make(plan, **kw)`` -> a store of this run's implementation, closed at the end. Redis gets a
    fresh key prefix and small Lua calls (``chunk_keys``), so every batch spans several of them;
    it reads the server's clock, so ``clock`` is dropped for it."""
    made = []
    client = request.getfixturevalue("redis_client") if request.param == "redis" else None

    def make(plan, **kw):
        if client is not None:
            kw.setdefault("key_prefix", f"t{uuid.uuid4().hex[:8]}")
            kw.setdefault("chunk_keys", 7)
            kw.pop("clock", None)
            store = RedisWindowStore(plan, client, **kw)
        else:
            store = MemoryWindowStore(plan, **kw)
        made.append(store)
        return store
    make.kind = request.param
    yield make
    for store in made:
        store.close()
