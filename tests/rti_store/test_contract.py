"""One contract, two window stores: in-memory and Redis (the real redis-server of the test stack).

Every test runs against both implementations and compares with an independent, set-based
reference (``expected_state`` / ``expected_read``) written from the definition in
``rti_store.base`` rather than from either implementation. One file on purpose (~580 lines): the
contract reads as one list of rules that every store must keep.
"""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.interactions import HopRows, interactions_of, interactions_of_rows
from schemas.plan_loading import builtin_plan, parse_plan
from schemas.values import RowError
from rti_store import Completeness, MemoryWindowStore, RedisWindowStore, StoreMarker, WindowStore
from tests.rti_store.conftest import FakeClock

def small_plan(name: str, columns: dict[str, str]):
    """Two hops over an ``interactions`` table with ``columns`` (households: max_len 4, products: 3),
    a 1000 ns look-back so caps are easy to hit."""
    return parse_plan({
        "name": name,
        "fact_table": "interactions",
        "tables": {
            "households": {"primary_key": "household_id", "columns": {"household_id": columns["household_id"]}},
            "products": {"primary_key": "product_id", "columns": {"product_id": columns["product_id"]}},
            "interactions": {"primary_key": "event_id", "time_column": "event_time", "columns": columns,
                             "foreign_keys": {"household_id": "households", "product_id": "products"}},
        },
        "distillation": {
            "embedding_keys": ["interactions.household_id", "interactions.product_id"],
            "max_embedding_offset": {"value": 14, "unit": "days"},
            "min_embedding_offset": {"value": 0, "unit": "days"},
            "real_time_offset": {"value": 1000, "unit": "nanoseconds"},
            "real_time_interactions": {
                "interactions.household_id->households.household_id->interactions.household_id": 4,
                "interactions.product_id->products.product_id->interactions.product_id": 3,
            },
        },
    })


# A small recommendation-like plan: int and string entities, string/int/float/timestamp columns.
RECO = small_plan("reco-test", {"event_id": "string", "event_time": "timestamp", "household_id": "int64",
                                "product_id": "string", "event_type": "string", "quantity": "int64",
                                "sales_value": "float64"})
HH, PROD = RECO.hop_keys
FRAUD = builtin_plan("fraud")


def event(i: int, t: int, household: int = 1, product: str = "p1", kind: str = "view", qty: int = 1,
          value: float | None = None) -> dict:
    return {"event_id": f"e{i}", "event_time": t, "household_id": household, "product_id": product,
            "event_type": kind, "quantity": qty, "sales_value": float(i) / 4 if value is None else value}


def appends(plan, rows, table="interactions"):
    return [a for r in rows for a in interactions_of(plan, table, r)]


# ----- the two implementations --------------------------------------------------------------------

@pytest.fixture
def make_store(store_factory):
    def make(plan=RECO, **kw):
        return store_factory(plan, **kw)
    make.kind = store_factory.kind
    return make


# ----- the independent reference -----------------------------------------------------------------

def expected_state(plan, hop_key, rows, horizon_ns=None, table="interactions"):
    """Set semantics: distinct (time, id), newest max_len, then drop rows older than newest - horizon."""
    horizon = plan.real_time_offset.ns if horizon_ns is None else horizon_ns
    items = {}
    for h, e, it in appends(plan, rows, table):
        if h == hop_key:
            items.setdefault(e, {}).setdefault((it.event_time, it.event_id), it)
    out = {}
    for entity, by_ident in items.items():
        keep = [by_ident[k] for k in sorted(by_ident)][-plan.hop(hop_key).max_len:]
        newest = keep[-1].event_time
        out[entity] = [it for it in keep if it.event_time >= newest - horizon]
    return out


def expected_read(plan, hop_key, state_rows, as_of):
    lo, hi = plan.rti_bounds(as_of)
    visible = [it for it in state_rows if lo <= it.event_time < hi]
    return visible[-plan.hop(hop_key).max_len:] if visible else []


def assert_window(plan, hop_key, window, interactions):
    hop = plan.hop(hop_key)
    table = plan.interaction_table(hop)
    assert window.event_time.dtype == np.int64
    assert list(window.event_time) == [it.event_time for it in interactions]
    for col in hop.columns:
        arr = window.columns[col]
        want = [it.values[col] for it in interactions]
        dtype = table.columns[col]
        if dtype == "string":
            assert arr.dtype == object and list(arr) == want, col
        elif dtype == "float32":
            assert arr.dtype == np.float32 and np.array_equal(arr, np.asarray(want, np.float32)), col
        else:
            assert arr.dtype == np.dtype({"float64": "float64"}.get(dtype, "int64")), col
            assert list(arr) == want, col


# ----- contract -------------------------------------------------------------------------------------

def test_redelivery_is_a_no_op(make_store):
    store = make_store()
    assert isinstance(store, WindowStore)
    rows = [event(i, 100 + i * 10, household=1 + i % 2, product=f"p{i % 3}") for i in range(8)]
    assert store.append(appends(RECO, rows)) == 16  # two hops per event
    before = store.dump_many([(HH, 1), (HH, 2), (PROD, "p0")])
    assert store.append(appends(RECO, rows)) == 0
    assert store.append(appends(RECO, rows[::-1] + rows)) == 0
    after = store.dump_many([(HH, 1), (HH, 2), (PROD, "p0")])
    for a, b in zip(before, after):
        assert np.array_equal(a.event_time, b.event_time)
    state = expected_state(RECO, HH, rows)
    assert_window(RECO, HH, after[0], state[1])


def test_same_time_different_ids_are_distinct_and_ordered_by_id(make_store):
    store = make_store()
    rows = [event(i, 500) for i in (3, 1, 2)]
    store.append(appends(RECO, rows))
    window = store.read(HH, 1, 501)
    assert_window(RECO, HH, window, expected_state(RECO, HH, rows)[1])
    assert len(window) == 3


def test_late_event_lands_in_its_place(make_store):
    store = make_store()
    rows = [event(1, 100), event(2, 300), event(3, 400)]
    store.append(appends(RECO, rows))
    late = event(4, 200, qty=9)
    assert store.append(appends(RECO, [late])) == 2
    window = store.read(HH, 1, 1000)
    assert list(window.event_time) == [100, 200, 300, 400]
    assert list(window.columns["quantity"]) == [1, 9, 1, 1]


def test_count_cap_keeps_the_newest(make_store):
    store = make_store()
    rows = [event(i, 100 + i) for i in range(10)]
    assert store.append(appends(RECO, rows[5:])) == 4 + 3  # kept: 4 in the household window, 3 in the product one
    assert store.append(appends(RECO, rows[:5])) == 0  # older, arrive later: trimmed on arrival
    assert store.append(appends(RECO, rows)) == 0  # a full redelivery stores nothing new
    state = store.dump_many([(HH, 1), (PROD, "p1")])
    assert list(state[0].event_time) == [106, 107, 108, 109]  # max_len 4
    assert list(state[1].event_time) == [107, 108, 109]  # max_len 3


def test_age_cap_is_measured_from_the_newest_event_time(make_store):
    store = make_store(horizon_ns=50)
    store.append(appends(RECO, [event(1, 100), event(2, 120)]))
    assert list(store.dump_many([(HH, 1)])[0].event_time) == [100, 120]
    store.append(appends(RECO, [event(3, 160)]))  # cutoff 110: 100 goes, 120 stays
    assert list(store.dump_many([(HH, 1)])[0].event_time) == [120, 160]
    hh_only = lambda rows: [a for a in appends(RECO, rows) if a[0] == HH]  # noqa: E731
    assert store.append(hh_only([event(4, 110)])) == 1  # late and exactly at the cutoff: kept
    assert store.append(hh_only([event(5, 109)])) == 0  # late and older than the cutoff: dropped
    assert list(store.dump_many([(HH, 1)])[0].event_time) == [110, 120, 160]
    store.append(appends(RECO, [event(6, 10_000)]))
    assert list(store.dump_many([(HH, 1)])[0].event_time) == [10_000]


def test_default_horizon_is_the_real_time_offset(make_store):
    store = make_store()
    assert store.horizon_ns == RECO.real_time_offset.ns == 1000
    store.append(appends(RECO, [event(1, 0), event(2, 999), event(3, 1000)]))
    assert list(store.dump_many([(HH, 1)])[0].event_time) == [0, 999, 1000]
    store.append(appends(RECO, [event(4, 1001)]))
    assert list(store.dump_many([(HH, 1)])[0].event_time) == [999, 1000, 1001]


def test_point_in_time_reads(make_store):
    store = make_store()
    rows = [event(i, t) for i, t in enumerate([100, 200, 300, 400, 500])]
    store.append(appends(RECO, rows[1:]))  # 200..500 stored (max_len 4)
    assert list(store.read(HH, 1, 400).event_time) == [200, 300]  # never at or after as_of
    assert list(store.read(HH, 1, 401).event_time) == [200, 300, 400]
    assert list(store.read(HH, 1, 200).event_time) == []
    assert list(store.read(HH, 1, 10**6).event_time) == []  # all older than as_of - 1000
    assert list(store.read(HH, 1, 1200).event_time) == [200, 300, 400, 500]  # lo = 200 is inclusive
    assert list(store.read(HH, 1, 1201).event_time) == [300, 400, 500]
    assert list(store.read(PROD, "p1", 10**4).event_time) == []
    # the read cap is the hop's max_len (3 for products), newest first kept
    assert list(store.read(PROD, "p1", 501).event_time) == [300, 400, 500]
    assert list(store.read(PROD, "p1", 450).event_time) == [300, 400]
    # extreme anchors do not overflow
    assert len(store.read(HH, 1, -(2**63))) == 0
    assert len(store.read(HH, 1, 2**63 - 1)) == 0


def test_read_many_mixes_hops_entities_and_anchor_times(make_store):
    store = make_store()
    rng = np.random.default_rng(7)
    rows = [event(i, int(rng.integers(0, 3000)), household=int(rng.integers(0, 60)),
                  product=f"p{int(rng.integers(0, 40))}", qty=int(rng.integers(-5, 5)))
            for i in range(1500)]
    store.append(appends(RECO, rows))
    keys = [(HH, h) for h in range(64)] + [(PROD, f"p{p}") for p in range(45)]
    anchors = [int(a) for a in rng.integers(0, 3500, len(keys))]
    got = store.read_many(keys, anchors)
    states = {HH: expected_state(RECO, HH, rows), PROD: expected_state(RECO, PROD, rows)}
    for (hop, entity), t, window in zip(keys, anchors, got):
        key_entity = entity.encode() if isinstance(entity, str) else entity
        assert_window(RECO, hop, window, expected_read(RECO, hop, states[hop].get(key_entity, []), t))
    # one anchor for all keys
    same = store.read_many(keys, 3001)
    for (hop, entity), window in zip(keys, same):
        key_entity = entity.encode() if isinstance(entity, str) else entity
        assert_window(RECO, hop, window, expected_read(RECO, hop, states[hop].get(key_entity, []), 3001))
    with pytest.raises(ValueError, match="as_of"):
        store.read_many(keys, anchors[:3])
    assert store.read_many([], 5) == []


def test_empty_windows_have_plan_dtypes(make_store):
    store = make_store()
    for hop, entity in ((HH, 12345), (PROD, "never-seen")):
        window = store.read(hop, entity, 10**9)
        assert len(window) == 0 and window.event_time.dtype == np.int64
        assert set(window.columns) == set(RECO.hop(hop).columns)
        assert window.columns["event_type"].dtype == object
    fraud = make_store(FRAUD)
    w = fraud.read(FRAUD.hop_keys[0], 1, 10**18)
    assert len(w) == 0 and w.columns["tx_amount"].dtype == np.float32


def test_string_columns_and_awkward_entity_ids(make_store):
    store = make_store()
    weird = ["", "{braces}", "a}b{c", "100%", "ünïcødé ☃", "x" * 300]
    rows = [event(i, 100 + i, product=p, kind=k)
            for i, (p, k) in enumerate(zip(weird, ["", "add_to_cart", "é", "{", "}", "y" * 1000]))]
    store.append(appends(RECO, rows))
    for r in rows:
        window = store.read(PROD, r["product_id"], 1000)
        assert list(window.columns["event_type"]) == [r["event_type"].encode()]
        assert window.columns["sales_value"][0] == r["sales_value"]
    hh = store.read(HH, 1, 1000)
    assert list(hh.columns["product_id"]) == [w.encode() for w in weird][-4:]
    assert list(hh.columns["event_type"]) == ["é".encode(), b"{", b"}", b"y" * 1000]


def test_fraud_plan_float32_and_int_columns(make_store):
    store = make_store(FRAUD)
    day = 86_400 * 10**9
    txs = [{"transaction_id": i, "tx_datetime": 10**18 + i * day // 2, "customer_id": i % 3,
            "terminal_id": 7, "tx_amount": 10.123 + i, "tx_fraud": 1} for i in range(40)]
    store.append(appends(FRAUD, txs, "transactions"))
    hop_c, hop_t = FRAUD.hop_keys
    for hop in FRAUD.hop_keys:
        state = expected_state(FRAUD, hop, txs, table="transactions")
        for entity, items in state.items():
            assert_window(FRAUD, hop, store.dump_many([(hop, entity)])[0], items)
    w = store.read(hop_t, 7, 10**18 + 40 * day // 2)
    assert len(w) == 14  # 7-day look-back at half-day spacing; terminal window holds 32
    assert "tx_fraud" not in w.columns


def test_ttl_expires_idle_windows(make_store):
    if make_store.kind == "memory":
        clock = FakeClock()
        store = make_store(ttl_s=60, clock=clock)
        store.append(appends(RECO, [event(1, 100), event(2, 100, household=2)]))
        clock.now += 30
        store.append(appends(RECO, [event(3, 200)]))  # household 1 touched again
        clock.now += 45  # household 2 idle 75 s > 60 s, household 1 idle 45 s
        assert len(store.read(HH, 2, 1000)) == 0
        assert len(store.read(HH, 1, 1000)) == 2
        clock.now += 60
        assert store.sweep() >= 1
        assert len(store.read(HH, 1, 1000)) == 0
        never = make_store(ttl_s=None, clock=clock)
        never.append(appends(RECO, [event(1, 100)]))
        clock.now += 10**9
        assert len(never.read(HH, 1, 1000)) == 1
    else:
        store = make_store(ttl_s=0.3)
        store.append(appends(RECO, [event(1, 100)]))
        assert 0 < store.ttl_ms(HH, 1) <= 300
        assert len(store.read(HH, 1, 1000)) == 1
        deadline = time.monotonic() + 5
        while store.ttl_ms(HH, 1) != -2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(store.read(HH, 1, 1000)) == 0
        forever = make_store(ttl_s=None)
        assert forever.append(appends(RECO, [event(1, 100)])) == 2
        assert forever.ttl_ms(HH, 1) == -1  # no expiry set


def test_bad_input_names_the_field_and_stores_nothing(make_store):
    store = make_store()
    good = appends(RECO, [event(1, 100)])
    with pytest.raises(RowError, match="unknown hop key"):
        store.append(good + [("nope.a->x.b->y.c", 1, good[0][2])])
    hop, entity, it = good[0]
    broken = type(it)(event_id=it.event_id, event_time=it.event_time, values={**it.values, "quantity": "many"})
    with pytest.raises(RowError, match="quantity"):
        store.append(good + [(hop, entity, broken)])
    missing = type(it)(event_id=it.event_id, event_time=it.event_time,
                       values={k: v for k, v in it.values.items() if k != "sales_value"})
    with pytest.raises(RowError, match="sales_value"):
        store.append([(hop, entity, missing)])
    with pytest.raises(RowError, match="household_id"):
        store.append([(hop, "not-an-int", it)])
    assert len(store.read(HH, 1, 1000)) == 0  # all or nothing


# ----- property: delivery order and duplicates never change the final windows --------------------

events_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(-1500, 3000), st.integers(0, 3), st.integers(0, 2)),
    min_size=1, max_size=60, unique_by=lambda e: e[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, data=st.data())
def test_any_delivery_order_with_duplicates_equals_a_clean_sorted_pass(make_store, events, data):
    rows = [event(i, t, household=h, product=f"p{p}") for i, t, h, p in events]
    # a delivery = a random permutation with redeliveries, cut into random batches
    order = data.draw(st.permutations(rows))
    dupes = data.draw(st.lists(st.sampled_from(rows), max_size=20))
    delivery = list(order)
    for d in dupes:
        delivery.insert(data.draw(st.integers(0, len(delivery))), d)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(delivery)), max_size=6)))
    batches = [delivery[a:b] for a, b in zip([0] + cuts, cuts + [len(delivery)])]

    horizon = data.draw(st.sampled_from([0, 700, 2**62]))
    messy = make_store(horizon_ns=horizon)
    for batch in batches:
        messy.append(appends(RECO, batch))
    clean = make_store(horizon_ns=horizon)
    for r in sorted(rows, key=lambda r: (r["event_time"], r["event_id"])):
        clean.append(appends(RECO, [r]))

    assert messy.append(appends(RECO, delivery)) == 0  # everything again: nothing new
    keys = [(HH, h) for h in range(4)] + [(PROD, f"p{p}") for p in range(3)]
    for hop_key, entity in keys:
        assert messy.rows(hop_key, entity) == clean.rows(hop_key, entity)
    states = {HH: expected_state(RECO, HH, rows, horizon), PROD: expected_state(RECO, PROD, rows, horizon)}
    for (hop, entity), window in zip(keys, messy.dump_many(keys)):
        e = entity.encode() if isinstance(entity, str) else entity
        assert_window(RECO, hop, window, states[hop].get(e, []))
    anchor = data.draw(st.integers(-2000, 4000))
    for (hop, entity), window in zip(keys, messy.read_many(keys, anchor)):
        e = entity.encode() if isinstance(entity, str) else entity
        assert_window(RECO, hop, window, expected_read(RECO, hop, states[hop].get(e, []), anchor))


# ----- the batch path: window rows as columns ------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, data=st.data())
def test_append_rows_equals_append_of_the_same_rows(make_store, events, data):
    # rows as the ingest batch path hands them over (columns per hop, some per-row items), with
    # redeliveries, late rows and both caps: same stored bytes and same counts as append()
    rows = [event(i, t, household=h, product=f"p{p}") for i, t, h, p in events]
    delivery = data.draw(st.permutations(rows)) + data.draw(st.lists(st.sampled_from(rows), max_size=15))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(delivery)), max_size=4)))
    horizon = data.draw(st.sampled_from([0, 700, 2**62]))
    by_items, by_rows = make_store(horizon_ns=horizon), make_store(horizon_ns=horizon)
    for a, b in zip([0] + cuts, cuts + [len(delivery)]):
        batch = interactions_of_rows(RECO, "interactions", delivery[a:b])
        split = data.draw(st.integers(0, batch.n))  # rows past `split` go as per-row items
        hops = [HopRows(h.hop_key, h.source[:split], h.entity[:split], h.event_time[:split], h.event_id[:split],
                        {c: v[:split] for c, v in h.values.items()}) for h in batch.hops]
        tail = [HopRows(h.hop_key, h.source[split:], h.entity[split:], h.event_time[split:], h.event_id[split:],
                        {c: v[split:] for c, v in h.values.items()}) for h in batch.hops]
        items = [a for h in tail for a in h.items()]
        expected = by_items.append([a for h in hops for a in h.items()] + items)
        assert by_rows.append_rows(hops, items) == expected
    keys = [(HH, h) for h in range(4)] + [(PROD, f"p{p}") for p in range(3)]
    for hop_key, entity in keys:
        assert by_rows.rows(hop_key, entity) == by_items.rows(hop_key, entity)


def test_append_rows_of_the_fraud_plan_encodes_like_append(make_store):
    rng = np.random.default_rng(11)
    rows = [{"transaction_id": i, "tx_datetime": int(rng.integers(0, 10**12)), "customer_id": int(rng.integers(0, 7)),
             "terminal_id": int(rng.integers(-3, 3)), "tx_amount": float(np.float32(rng.gamma(2.0, 30.0)))}
            for i in range(400)]
    by_items, by_rows = make_store(FRAUD), make_store(FRAUD)
    for i in range(0, len(rows), 90):
        batch = interactions_of_rows(FRAUD, "transactions", rows[i:i + 90])
        assert by_rows.append_rows(batch.hops) == by_items.append(appends(FRAUD, rows[i:i + 90], "transactions"))
    for hop_key, entity in [(k, e) for k in FRAUD.hop_keys for e in range(-3, 7)]:
        assert by_rows.rows(hop_key, entity) == by_items.rows(hop_key, entity)
    too_big = dict(rows[0], transaction_id=10**6, tx_amount=1e39)  # beyond float32: refused, nothing stored
    batch = interactions_of_rows(FRAUD, "transactions", [rows[1] | {"transaction_id": 10**6 + 1}, too_big])
    with pytest.raises(RowError, match="tx_amount"):
        by_rows.append_rows(batch.hops)
    assert by_rows.append_rows(interactions_of_rows(FRAUD, "transactions", rows).hops) == 0


# ----- windows of fixed-width rows (packed in Redis) behave like the reference ---------------------

# fixed-width rows only (kept as packed strings by the Redis store)
NUMERIC = small_plan("numeric-test", {"event_id": "int64", "event_time": "timestamp", "household_id": "int64",
                                      "product_id": "int64", "price": "float32", "sales_value": "float64"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.integers(-5, 40), st.integers(-1500, 3000), st.integers(0, 3), st.integers(-1, 1)),
                       min_size=1, max_size=60, unique_by=lambda e: (e[0], e[1])), data=st.data())
def test_fixed_width_windows_equal_the_reference_under_any_delivery(redis_client, events, data):
    # ids repeat across times (identity is (time, id)); same-time rows; late rows; both caps;
    # redeliveries; the batch path and the row path mixed
    rows = [{"event_id": i, "event_time": t, "household_id": u, "product_id": it, "price": float(i) / 8,
             "sales_value": t / 3} for i, t, u, it in events]
    delivery = data.draw(st.permutations(rows)) + data.draw(st.lists(st.sampled_from(rows), max_size=15))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(delivery)), max_size=5)))
    horizon = data.draw(st.sampled_from([0, 700, 2**62]))
    ref = MemoryWindowStore(NUMERIC, horizon_ns=horizon)
    red = RedisWindowStore(NUMERIC, redis_client, horizon_ns=horizon, key_prefix=f"n{uuid.uuid4().hex[:8]}",
                           chunk_keys=3)
    for a, b in zip([0] + cuts, cuts + [len(delivery)]):
        part = appends(NUMERIC, delivery[a:b])
        if data.draw(st.booleans()):
            stored = red.append_rows(interactions_of_rows(NUMERIC, "interactions", delivery[a:b]).hops)
        else:
            stored = red.append(part)
        assert stored == ref.append(part)
    assert red.append(appends(NUMERIC, rows)) == 0
    keys = [(k, e) for k in NUMERIC.hop_keys for e in range(-1, 4)]
    for hop_key, entity in keys:
        assert red.rows(hop_key, entity) == ref.rows(hop_key, entity)
        assert (red.ttl_ms(hop_key, entity) > 0) == bool(ref.rows(hop_key, entity))  # idle windows expire
    anchors = [data.draw(st.integers(-2000, 4000)) for _ in keys]
    for got, want in zip(red.read_many(keys, anchors), ref.read_many(keys, anchors)):
        assert got.event_time.tolist() == want.event_time.tolist()
        assert all(got.columns[c].dtype == want.columns[c].dtype and got.columns[c].tolist() == want.columns[c].tolist()
                   for c in want.columns)


# ----- both implementations store the very same bytes ----------------------------------------------

def test_memory_and_redis_store_identical_rows(redis_client):
    rng = np.random.default_rng(3)
    rows = [event(i, int(rng.integers(0, 2000)), household=int(rng.integers(0, 5)),
                  product=f"p{int(rng.integers(0, 4))}") for i in range(300)]
    mem = MemoryWindowStore(RECO)
    red = RedisWindowStore(RECO, redis_client, key_prefix="same")
    for i in range(0, len(rows), 37):
        batch = appends(RECO, rows[i:i + 37])
        assert mem.append(batch) == red.append(batch)
    for hop, entity in [(HH, h) for h in range(5)] + [(PROD, f"p{p}") for p in range(4)]:
        assert mem.rows(hop, entity) == red.rows(hop, entity)


def test_hot_key_batch_is_pruned_without_changing_the_result(make_store):
    # a backfill-like batch: 300 rows of one household (and one product) in random order with
    # redeliveries, spanning more than the horizon
    rng = np.random.default_rng(5)
    rows = [event(i, int(t), household=9, product="hot") for i, t in enumerate(rng.integers(0, 5000, 300))]
    delivery = [rows[i] for i in rng.permutation(len(rows))] + rows[:50]
    store = make_store()
    stored = store.append(appends(RECO, delivery))
    state = {hop: expected_state(RECO, hop, rows) for hop in (HH, PROD)}
    assert stored == len(state[HH][9]) + len(state[PROD][b"hot"])
    assert_window(RECO, HH, store.dump_many([(HH, 9)])[0], state[HH][9])
    assert_window(RECO, PROD, store.dump_many([(PROD, "hot")])[0], state[PROD][b"hot"])
    assert store.append(appends(RECO, delivery)) == 0


# ----- completeness marker: a store that lost its data says so -------------------------------------

def lose_everything(store, make_store):
    """What a Redis restart without persistence (or a flush) does to the store."""
    if make_store.kind == "redis":
        store.client.flushdb()
    else:
        store.forget_everything()


def test_a_store_without_marker_reads_as_lost(make_store):
    store = make_store()
    store.append(appends(RECO, [event(1, 100)]))
    windows, state = store.read_many_checked([(HH, 1)], 200)
    assert state is Completeness.LOST and len(windows[0]) == 1
    assert store.marker() == StoreMarker(Completeness.LOST)


def test_claim_lists_every_partition_until_each_is_finished(make_store):
    store = make_store()
    parts = [("tx", 0), ("tx", 1), ("logins", 0)]
    m = store.claim_rebuild(parts, from_ms=1234, epoch="e1")
    assert m.completeness is Completeness.REBUILDING and m.epoch == "e1"
    assert m.pending == {p: 1234 for p in parts}
    # a second member claiming later sees the first claim, not a new generation
    assert store.claim_rebuild([("tx", 0)], from_ms=9, epoch="e2") == m
    assert store.read_many_checked([(HH, 1)], 200)[1] is Completeness.REBUILDING
    assert store.finish_rebuild("tx", 0, "e2") is False  # another generation cannot clear it
    assert store.finish_rebuild("tx", 0, "e1") is True
    assert store.finish_rebuild("tx", 0, "e1") is False  # already done
    store.finish_rebuild("tx", 1, "e1")
    assert store.read_many_checked([(HH, 1)], 200)[1] is Completeness.REBUILDING
    store.finish_rebuild("logins", 0, "e1")
    windows, state = store.read_many_checked([(HH, 1), (PROD, "p1")], 200)
    assert state is Completeness.COMPLETE and [len(w) for w in windows] == [0, 0]
    assert store.marker() == StoreMarker(Completeness.COMPLETE, "e1", {})


def test_losing_the_data_loses_the_marker_and_a_new_claim_starts_a_generation(make_store):
    store = make_store()
    store.mark_complete("e1")
    store.append(appends(RECO, [event(1, 100)]))
    assert store.read_many_checked([(HH, 1)], 200)[1] is Completeness.COMPLETE
    lose_everything(store, make_store)
    windows, state = store.read_many_checked([(HH, 1)], 200)
    assert state is Completeness.LOST and len(windows[0]) == 0
    m = store.claim_rebuild([("tx", 0)], from_ms=5, epoch="e2", steps=["backfill"])
    assert m == StoreMarker(Completeness.REBUILDING, "e2", {("tx", 0): 5}, frozenset({"backfill"}))
    assert store.read_many_checked([], 200) == ([], Completeness.REBUILDING)
    store.finish_rebuild("tx", 0, "e2")
    assert store.read_many_checked([], 200)[1] is Completeness.REBUILDING  # the backfill still runs
    assert store.finish_step("backfill", "e1") is False
    assert store.finish_step("backfill", "e2") is True
    assert store.marker() == StoreMarker(Completeness.COMPLETE, "e2", {})


def test_plain_reads_are_unchanged_by_the_marker(make_store):
    store = make_store()
    rows = [event(i, 10 * i) for i in range(1, 6)]
    store.append(appends(RECO, rows))
    plain = store.read_many([(HH, 1), (PROD, "p1")], 45)
    store.mark_complete("e1")
    checked, state = store.read_many_checked([(HH, 1), (PROD, "p1")], 45)
    assert state is Completeness.COMPLETE
    assert all(len(w) > 0 for w in plain)
    for a, b in zip(plain, checked):
        assert np.array_equal(a.event_time, b.event_time)
        assert all(np.array_equal(a.columns[c], b.columns[c]) for c in a.columns)


# ----- writers of the same windows (two ingest processes, a backfill beside ingest) -------------

def numeric_rows(ids, rng):
    return [{"event_id": i, "event_time": int(rng.integers(0, 3000)), "household_id": int(rng.integers(0, 3)),
             "product_id": int(rng.integers(0, 2)), "price": float(i) / 8, "sales_value": float(i)} for i in ids]


def test_concurrent_writers_of_the_same_windows_lose_nothing(redis_client):
    rng = np.random.default_rng(6)
    prefix = f"race{uuid.uuid4().hex[:8]}"
    parts = [numeric_rows(range(k * 400, (k + 1) * 400), rng) for k in range(2)]

    def writer(k):
        store = RedisWindowStore(NUMERIC, redis_client, key_prefix=prefix, chunk_keys=1)
        for i in range(0, 400, 8):  # small batches on 3 + 2 windows: the writers collide often
            store.append_rows(interactions_of_rows(NUMERIC, "interactions", parts[k][i:i + 8]).hops)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    red = RedisWindowStore(NUMERIC, redis_client, key_prefix=prefix)
    ref = MemoryWindowStore(NUMERIC)
    ref.append(appends(NUMERIC, parts[0] + parts[1]))
    for hop_key in NUMERIC.hop_keys:
        for entity in range(3):
            assert red.rows(hop_key, entity) == ref.rows(hop_key, entity)
