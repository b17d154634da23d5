"""Redis key layout: hash-tagged per (hop, entity) so Redis Cluster routes each window to one slot."""
from __future__ import annotations

import pytest
from redis.cluster import key_slot

from schemas.plan_loading import builtin_plan
from rti_store.codec import codecs_for
from rti_store.redis_store import RedisWindowStore, entity_token

PLAN = builtin_plan("fraud")
HOP_C, HOP_T = PLAN.hop_keys


def store():
    # no connection is made until a command runs; key construction is pure
    return RedisWindowStore(PLAN, "redis://127.0.0.1:1/0")


def hash_tag(key: bytes) -> bytes:
    """Redis Cluster's rule: the bytes between the first '{' and the next '}' (if non-empty)."""
    start = key.index(b"{")
    end = key.index(b"}", start + 1)
    assert end > start + 1
    return key[start + 1:end]


@pytest.mark.parametrize("entity", [0, 42, -7, 2**63 - 1])
def test_every_key_of_an_entity_window_is_in_the_slot_of_its_tag(entity):
    s = store()
    for hop in PLAN.hop_keys:
        key = s.redis_key(hop, entity)
        tag = hash_tag(key)
        assert tag == f"{s.codecs[hop].layout_id}:{entity}".encode()
        assert key_slot(key) == key_slot(tag)
        assert key.startswith(b"rs:{")
    # the hop id is short and stable (a hash of the hop key and its row layout)
    assert len(s.codecs[HOP_C].layout_id) == 8
    assert s.codecs[HOP_C].layout_id == codecs_for(builtin_plan("fraud"))[HOP_C].layout_id


def test_entities_spread_over_slots_and_hops_do_not_share_keys():
    s = store()
    slots = {key_slot(s.redis_key(HOP_C, e)) for e in range(2000)}
    assert len(slots) > 1500  # 16384 slots; 2000 entities should hardly collide
    assert s.redis_key(HOP_C, 5) != s.redis_key(HOP_T, 5)


@pytest.mark.parametrize("raw", [b"plain", b"{x}", b"a}b", b"%7B", "ünï".encode()])
def test_string_entities_cannot_break_the_hash_tag(raw):
    token = entity_token(raw)
    assert b"{" not in token and b"}" not in token
    assert entity_token(b"{x}") != entity_token(b"%7Bx%7D")  # escaping is injective


def test_key_prefix_is_validated():
    with pytest.raises(ValueError, match="key_prefix"):
        RedisWindowStore(PLAN, "redis://127.0.0.1:1/0", key_prefix="a{b")


def test_text_clients_are_refused():
    import redis
    with pytest.raises(ValueError, match="decode_responses"):
        RedisWindowStore(PLAN, redis.Redis(port=1, decode_responses=True))


def test_numpy_scalars_encode_like_python_ints_and_floats_are_refused():
    import numpy as np
    from schemas.interactions import Interaction
    from schemas.values import RowError
    from rti_store.codec import RowCodec

    codec = RowCodec(PLAN, PLAN.hop(HOP_C))
    values = {"tx_datetime": 5, "terminal_id": 7, "tx_amount": 1.25}
    plain = codec.encode(Interaction(event_id=3, event_time=5, values=values))
    numpy = codec.encode(Interaction(event_id=np.int64(3), event_time=np.int64(5),
                                     values={**values, "terminal_id": np.int64(7), "tx_amount": np.float32(1.25)}))
    assert plain == numpy
    with pytest.raises(RowError, match="event_time"):
        codec.encode(Interaction(event_id=3, event_time=5.5, values=values))
    with pytest.raises(RowError, match="event_id"):
        codec.encode(Interaction(event_id=True, event_time=5, values=values))
    with pytest.raises(RowError, match="event_time"):
        codec.encode(Interaction(event_id=3, event_time=2**63, values=values))
