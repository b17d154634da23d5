"""Label windows in both window stores (in-memory and the real redis-server of the test stack).

Known labels are kept per entity like interaction windows (identity = (known time, fact id)), so
the same guarantees hold: duplicates and redeliveries are no-ops, arrival order does not matter,
and an as-of read counts exactly the labels known in ``[T - h, T)``. The reference below counts
from the set of distinct label events, written from the rule, not from either store.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.interactions import interactions_of, interactions_of_rows, with_known_time
from schemas.plan_loading import builtin_plan
from schemas.tensors import label_stats
from tests.rti_store.conftest import FakeClock

DAY = 86_400 * 10**9
FL = builtin_plan("fraud_labels")
CUST, TERM = (h.key.key for h in FL.label_hops)
T0 = 1_000 * DAY


@pytest.fixture
def make_store(store_factory):
    def make(**kw):
        if store_factory.kind == "redis":
            kw.setdefault("chunk_keys", 3)
        return store_factory(FL, **kw)
    make.kind = store_factory.kind
    return make


def label(tx: int, t: int, fraud: int, known: int | None = None, customer: int = 1, terminal: int = 2) -> dict:
    return {"transaction_id": tx, "tx_datetime": t, "customer_id": customer, "terminal_id": terminal,
            "tx_fraud": fraud, "label_known_at": known}


def appends(rows):
    return [a for r in rows for a in interactions_of(FL, "transaction_labels", r)]


def reference(rows, key_col: str, entity: int, T: int) -> dict:
    """Counts from the distinct label events (identity (known time, fact id), first one kept)."""
    seen = {}
    for r in rows:
        r = with_known_time(FL, r)
        if r[key_col] == entity:
            seen.setdefault((r["label_known_at"], r["transaction_id"]), r["tx_fraud"])
    out = {}
    for h in FL.label_feedback.horizons:
        inside = [v for (k, _), v in seen.items() if T - h.ns <= k < T]
        pos = sum(1 for v in inside if v > 0)
        out[(h.ns, "count")], out[(h.ns, "positives")] = float(len(inside)), float(pos)
        out[(h.ns, "rate")] = pos / len(inside) if inside else 0.0
    return out


def stats(store, hop_key, entity, T):
    return label_stats(FL, store.read(hop_key, entity, T), T)


def test_duplicates_and_redelivery_are_no_ops(make_store):
    store = make_store()
    rows = [label(i, T0 + i * DAY, i % 2, customer=1 + i % 2) for i in range(6)]
    assert store.append(appends(rows)) == 12  # two label keys per event
    assert store.append(appends(rows)) == 0
    assert store.append(appends(rows[::-1] + rows[:2])) == 0
    T = T0 + 20 * DAY
    for c in (1, 2):
        assert stats(store, CUST, c, T) == reference(rows, "customer_id", c, T)
    assert stats(store, TERM, 2, T) == reference(rows, "terminal_id", 2, T)
    assert stats(store, TERM, 2, T)[(30 * DAY, "count")] == 6.0


def test_known_time_edges_and_late_labels(make_store):
    store = make_store()
    T = T0 + 40 * DAY
    rows = [label(1, T - 8 * DAY, 1),                       # known T - 1 d: counted by 1 d
            label(2, T - 7 * DAY, 1),                       # known exactly T: not counted
            label(3, T - 20 * DAY, 1, known=T - DAY - 1),   # a late label, known just before T - 1 d
            label(4, T - 38 * DAY, 0, known=T - 30 * DAY),  # known exactly T - 30 d: counted by 30 d
            label(5, T - 38 * DAY, 1, known=T - 30 * DAY - 1)]  # just outside every horizon
    store.append(appends(rows))
    s = stats(store, TERM, 2, T)
    assert (s[(DAY, "count")], s[(DAY, "positives")]) == (1.0, 1.0)
    assert (s[(7 * DAY, "count")], s[(7 * DAY, "positives")]) == (2.0, 2.0)
    assert (s[(30 * DAY, "count")], s[(30 * DAY, "positives")], s[(30 * DAY, "rate")]) == (3.0, 2.0, 2 / 3)
    later = stats(store, TERM, 2, T + 1)  # a moment later: the label known at T counts, T - 1 d left the 1 d
    assert (later[(DAY, "count")], later[(7 * DAY, "count")]) == (1.0, 3.0)


def test_label_windows_outlive_the_interaction_ttl(make_store):
    clock = FakeClock()
    store = make_store(ttl_s=7 * 86_400, clock=clock)
    assert store.ttl_of(TERM) == 30 * 86_400 and store.ttl_of(FL.hop_keys[0]) == 7 * 86_400
    store.append(appends([label(1, T0, 1)]))
    if make_store.kind == "redis":
        assert 29 * 86_400_000 < store.ttl_ms(TERM, 2) <= 30 * 86_400_000
        assert len(store.rows(TERM, 2)[0]) == 24  # (known time, fact id) + the label
        return
    clock.now += 8 * 86_400
    assert len(store.rows(TERM, 2)) == 1
    clock.now += 23 * 86_400
    assert store.rows(TERM, 2) == []


label_events = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60), st.integers(0, 1),
                                  st.one_of(st.none(), st.integers(0, 12)), st.integers(1, 3), st.integers(1, 2)),
                        min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=label_events, seed=st.integers(0, 2**31), cut=st.integers(1, 10))
def test_any_order_any_batching_same_counts(make_store, events, seed, cut):
    # events: (tx id, fact day, fraud, known after n days or default, customer, terminal)
    # one label event per fact (the contract; two events with the same identity but different
    # values would keep whichever came first, as for interactions)
    by_fact = {tx: (tx, d, f, k, c, t) for tx, d, f, k, c, t in reversed(events)}
    rows = [label(tx, T0 + d * DAY // 2, f, None if k is None else T0 + d * DAY // 2 + k * DAY // 3, c, t)
            for tx, d, f, k, c, t in by_fact.values()]
    shuffled = rows + random.Random(seed).sample(rows, len(rows) // 2)
    random.Random(seed + 1).shuffle(shuffled)
    store = make_store()
    for i in range(0, len(shuffled), cut):
        batch = interactions_of_rows(FL, "transaction_labels", shuffled[i:i + cut])
        store.append_rows(batch.hops, batch.fallback_items())
    newest = max(with_known_time(FL, r)["label_known_at"] for r in rows)
    for T in (newest, newest + 1, newest + DAY, newest + 7 * DAY):
        for c in (1, 2, 3):
            assert stats(store, CUST, c, T) == reference(rows, "customer_id", c, T)
        for t in (1, 2):
            assert stats(store, TERM, t, T) == reference(rows, "terminal_id", t, T)
