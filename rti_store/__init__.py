"""Per-entity real-time interaction windows: a Redis store and an in-memory store, one contract.

See :mod:`rti_store.base` for the semantics and :mod:`rti_store.codec` for the row encoding.
"""

from rti_store.base import AppendItem, Completeness, StoreMarker, StoreUnavailable, WindowKey, WindowStore
from rti_store.codec import CorruptRowError, RowCodec
from rti_store.memory import MemoryWindowStore


def __getattr__(name):  # RedisWindowStore imports redis lazily: offline code needs no client
    if name == "RedisWindowStore":
        from rti_store.redis_store import RedisWindowStore
        return RedisWindowStore
    raise AttributeError(name)


__all__ = ["AppendItem", "Completeness", "CorruptRowError", "MemoryWindowStore", "RedisWindowStore", "RowCodec",
           "StoreMarker", "StoreUnavailable", "WindowKey", "WindowStore"]
