"""Fast unit tests of the ranking request logic (parsing, session merge, exclusion, top-k)."""
from __future__ import annotations

import numpy as np
import pytest

from rti_store import MemoryWindowStore
from schemas.interactions import interactions_of
from schemas.plan_loading import builtin_plan
from schemas.tensors import build_tensors
from schemas.values import RowError
from scorer.recommend import (RecommendSettings, drop_items, merge_session, parse_request, prepare,
                              request_tensors, session_appends, session_items, top_items)

T0 = 1_700_000_000_000_000_000
HOUR = 3_600 * 10**9


@pytest.fixture(scope="module")
def recsys():
    return builtin_plan("recsys")


def line(i, t, product, basket, household=7, quantity=1, value=2.5):
    return {"transaction_id": i, "transaction_timestamp": t, "household_id": household, "product_id": product,
            "basket_id": basket, "quantity": quantity, "sales_value": value}


def parse(plan, body, catalog=np.arange(100, 200, dtype=np.int64), **kw):
    return parse_request(plan, body, now_ns=lambda: T0, catalog=catalog, settings=RecommendSettings(**kw))


def test_parse_defaults_and_candidate_sources(recsys):
    req = parse(recsys, {"household_id": 7, "candidates": [5, 6, 5, 7]})
    assert req.anchor_time == T0 and req.k == 10 and req.exclude_session_items
    assert list(req.candidates) == [5, 6, 7]  # deduplicated, first occurrence kept
    assert req.keys == ((recsys.hops[0].key.key, 7),)
    top = parse(recsys, {"household_id": 7, "candidates": {"from_catalog_top": 3}, "k": 2,
                         "anchor_time": "2023-11-14T22:13:20Z", "exclude_session_items": False})
    assert list(top.candidates) == [100, 101, 102] and top.k == 2 and not top.exclude_session_items
    assert top.anchor_time == T0


@pytest.mark.parametrize("body, field", [
    ({"household_id": 7, "candidates": [1], "bogus": 1}, "bogus"),
    ({"candidates": [1]}, "household_id"),
    ({"household_id": "seven", "candidates": [1]}, "household_id"),
    ({"household_id": 7}, "candidates"),
    ({"household_id": 7, "candidates": "1,2"}, "candidates"),
    ({"household_id": 7, "candidates": list(range(1001))}, "candidates"),
    ({"household_id": 7, "candidates": [1, "x"]}, "candidates[1]"),
    ({"household_id": 7, "candidates": [2**70]}, "candidates[0]"),
    ({"household_id": 7, "candidates": {"from_catalog_top": 0}}, "candidates.from_catalog_top"),
    ({"household_id": 7, "candidates": {"from_catalog_top": 101}}, "candidates.from_catalog_top"),
    ({"household_id": 7, "candidates": {"top": 5}}, "candidates.top"),
    ({"household_id": 7, "candidates": [1], "k": 0}, "k"),
    ({"household_id": 7, "candidates": [1], "k": 1001}, "k"),
    ({"household_id": 7, "candidates": [1], "k": "3"}, "k"),
    ({"household_id": 7, "candidates": [1], "exclude_session_items": 1}, "exclude_session_items"),
    ({"household_id": 7, "candidates": [1], "anchor_time": "yesterday"}, "anchor_time"),
    ({"household_id": 7, "candidates": [1], "session_events": {}}, "session_events"),
    ({"household_id": 7, "candidates": [1], "session_events": [{"product_id": 1}]},
     "session_events[0].transaction_id"),
    ({"household_id": 7, "candidates": [1], "session_events": [{**line(1, T0 - 5, 3, 9), "colour": "red"}]},
     "session_events[0].colour"),
    ({"household_id": 7, "candidates": [1], "session_events": [line(1, T0 - 5, 3, 9, household=8)]},
     "session_events[0].household_id"),
    ({"household_id": 7, "candidates": [1], "session_events": [line(1, T0 - 5, "x", 9)]},
     "session_events[0].product_id"),
])
def test_bad_requests_name_the_field(recsys, body, field):
    with pytest.raises(RowError) as err:
        parse(recsys, body)
    assert err.value.field == field


def test_catalog_top_without_a_catalog_is_refused(recsys):
    with pytest.raises(RowError, match="no catalog") as err:
        parse(recsys, {"household_id": 7, "candidates": {"from_catalog_top": 5}}, catalog=np.zeros(0, np.int64))
    assert err.value.field == "candidates.from_catalog_top"


def test_too_many_session_events(recsys):
    events = [line(i, T0 - 100 + i, i, 9) for i in range(4)]
    with pytest.raises(RowError, match="at most 3") as err:
        parse(recsys, {"household_id": 7, "candidates": [1], "session_events": events}, max_session_events=3)
    assert err.value.field == "session_events"


def test_merge_equals_the_window_store_with_the_events_appended(recsys):
    """Merging session events into a window read == reading the store after appending them."""
    hop = recsys.hops[0]
    history = [line(i, T0 - 3 * HOUR + i, 10 + i, 1) for i in range(6)]  # an earlier basket
    session = [line(100 + i, T0 - 60 + i, 50 + i, 2) for i in range(4)]  # the open basket
    late = line(200, T0, 99, 2)  # at the anchor: not history
    ancient = line(201, T0 - 31 * 24 * HOUR, 98, 0)  # beyond the 30-day look-back
    stored = history + session[:2]  # ingest already has the first two session lines
    store = MemoryWindowStore(recsys)
    store.append([a for r in stored for a in interactions_of(recsys, "transactions", r)])
    window = store.read(hop.key.key, 7, T0)
    given = session + session[1:3] + [late, ancient]  # redelivered + already stored + out of bounds
    merged = merge_session(recsys, hop, window, [a[2] for r in given for a in interactions_of(recsys, "transactions", r)], T0)
    reference = MemoryWindowStore(recsys)
    reference.append([a for r in history + session + [late, ancient] for a in interactions_of(recsys, "transactions", r)])
    want = reference.read(hop.key.key, 7, T0)
    assert merged.event_time.tolist() == want.event_time.tolist()
    for c in hop.columns:
        assert merged.columns[c].tolist() == want.columns[c].tolist(), c
    assert session_items(merged, "product_id", "basket_id").tolist() == [50, 51, 52, 53]


def test_merge_keeps_the_newest_max_len(recsys):
    hop = recsys.hops[0]
    rows = [line(i, T0 - 1000 + i, i, i // 10) for i in range(150)]
    empty = MemoryWindowStore(recsys).read(hop.key.key, 7, T0)
    merged = merge_session(recsys, hop, empty, [a[2] for r in rows for a in interactions_of(recsys, "transactions", r)], T0)
    assert len(merged) == hop.max_len and merged.columns["product_id"].tolist() == list(range(50, 150))


def test_prepare_excludes_the_open_basket_and_builds_the_plan_tensors(recsys):
    session = [line(1, T0 - 30, 11, 5), line(2, T0 - 20, 12, 5)]
    req = parse(recsys, {"household_id": 7, "candidates": [11, 13, 12, 14], "session_events": session})
    empty = [MemoryWindowStore(recsys).read(recsys.hops[0].key.key, 7, T0)]
    p = prepare(recsys, req, empty, RecommendSettings())
    assert list(p.candidates) == [13, 14] and p.excluded == 2
    tensors = request_tensors(recsys, p)
    same = build_tensors(recsys, {"household_id": 7}, p.windows, anchor_time=T0, candidates=[13, 14])
    assert set(tensors) == set(recsys.tensor_names)
    for name in tensors:
        np.testing.assert_array_equal(tensors[name], same[name])
    assert tensors[recsys.candidate_tensor].shape == (1, 2, 1)
    assert tensors[f"{recsys.hops[0].key.key}:product_id"].reshape(-1).tolist() == [11, 12]
    keep = prepare(recsys, parse(recsys, {"household_id": 7, "candidates": [11], "session_events": session,
                                          "exclude_session_items": False}), empty, RecommendSettings())
    assert list(keep.candidates) == [11]
    none_left = prepare(recsys, parse(recsys, {"household_id": 7, "candidates": [11, 12], "session_events": session}),
                        empty, RecommendSettings())
    assert none_left.candidates is None and none_left.excluded == 2


def test_top_items_orders_by_score_and_breaks_ties_by_listing_order():
    items = top_items(np.array([5, 6, 7, 8]), np.array([0.1, 0.9, 0.9, -np.inf, -np.inf], np.float32),
                      np.array([0, 1, 0, 0, 0], np.int8), 3)
    assert [(i["product_id"], i["cold_start"]) for i in items] == [(6, True), (7, False), (5, False)]
    assert list(drop_items([1, 2, 3], np.array([2]))) == [1, 3]


def test_session_appends_fill_the_household(recsys):
    out = session_appends(recsys, [{k: v for k, v in line(1, T0 - 5, 3, 9).items() if k != "household_id"}],
                          {"household_id": 7}, limit=10)
    assert len(out) == 1 and out[0][1] == 7 and out[0][2].values["product_id"] == 3
