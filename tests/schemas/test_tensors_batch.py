"""The batch path of the contract: ``interactions_of_columns`` / ``interactions_of_rows`` give, row for
row, exactly what the per-row reference ``interactions_of`` gives -- the same appends, and for a bad
row the same error (ingest dead-letters it with that message)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.interactions import (MISSING, ROW_CHECK_ERRORS, interactions_of, interactions_of_columns,
                                  interactions_of_rows)
from schemas.plan_loading import builtin_plan
from tests.rti_store.test_contract import RECO

FRAUD = builtin_plan("fraud")
# string primary key, string entity, string/int/float/timestamp hop columns
STRINGS = RECO

# values a decoded record may carry, good and bad, for every plan dtype
ANY_VALUE = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70), st.sampled_from([2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.0, -3.0, 2.5, 1e300]),
    st.booleans(), st.none(), st.text(max_size=8), st.sampled_from(["2024-01-02T03:04:05Z", "12", "x"]),
    st.binary(max_size=6), st.just(MISSING), st.lists(st.integers(), max_size=2),
)
GOOD = {"int64": st.integers(-(2**63), 2**63 - 1), "timestamp": st.integers(-(2**62), 2**62),
        "float32": st.floats(-1e6, 1e6, width=32), "float64": st.floats(allow_nan=False, allow_infinity=False),
        "string": st.one_of(st.text(max_size=6), st.binary(max_size=6))}


def rows_strategy(plan):
    table = plan.tables[plan.fact_table]

    def row(good):
        fields = {c: (GOOD[d] if good else ANY_VALUE) for c, d in table.columns.items()}
        return st.fixed_dictionaries(fields).map(lambda r: {k: v for k, v in r.items() if v is not MISSING})

    # mostly good rows, some with bad or missing fields, now and then not a row at all
    return st.lists(st.one_of(row(True), row(True), row(False), st.sampled_from([None, 7, "row"])), max_size=25)


def reference(plan, rows):
    out = []
    for r in rows:
        try:
            out.append(interactions_of(plan, plan.fact_table, r))
        except ROW_CHECK_ERRORS as exc:
            out.append(exc)
    return out


def same(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if isinstance(w, Exception):
            assert type(g) is type(w) and str(g) == str(w) and getattr(g, "field", 0) == getattr(w, "field", 0), i
        else:
            assert isinstance(g, list), (i, g)
            assert len(g) == len(w)
            for (gh, ge, gi), (wh, we, wi) in zip(g, w):
                assert (gh, ge, gi.event_id, gi.event_time) == (wh, we, wi.event_id, wi.event_time), i
                assert list(gi.values) == list(wi.values)
                for c, v in wi.values.items():
                    assert type(gi.values[c]) is type(v), (i, c)
                    assert gi.values[c] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(gi.values[c]))


@pytest.mark.parametrize("plan", [FRAUD, STRINGS], ids=["fraud", "strings"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_batch_equals_per_row_including_bad_rows(plan, data):
    rows = data.draw(rows_strategy(plan))
    batch = interactions_of_rows(plan, plan.fact_table, rows)
    same(batch.per_row(), reference(plan, rows))
    assert batch.window_rows == sum(len(r) for r in reference(plan, rows) if isinstance(r, list))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_numpy_columns_equal_per_row(data):
    # the columnar decoder hands over int64 / float32 arrays: same rows as the decoded dicts
    n = data.draw(st.integers(0, 30))
    ints = st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)
    cols = {"transaction_id": np.array(data.draw(ints), np.int64), "tx_datetime": np.array(data.draw(ints), np.int64),
            "customer_id": np.array(data.draw(ints), np.int64), "terminal_id": np.array(data.draw(ints), np.int64),
            "tx_amount": np.array(data.draw(st.lists(st.floats(width=32), min_size=n, max_size=n)), np.float32)}
    batch = interactions_of_columns(FRAUD, "transactions", cols, n)
    rows = [{c: a[i].item() for c, a in cols.items()} for i in range(n)]
    same(batch.per_row(), reference(FRAUD, rows))


def test_a_bad_row_keeps_the_reference_message_and_the_rest_stays_vectorised():
    rows = [{"transaction_id": 1, "tx_datetime": 10, "customer_id": 3, "terminal_id": 4, "tx_amount": 1.5},
            {"transaction_id": 2, "tx_datetime": 11, "customer_id": "three", "terminal_id": 4, "tx_amount": 1.5},
            {"transaction_id": 3, "tx_datetime": 12, "customer_id": 3, "terminal_id": 4, "tx_amount": float("nan")},
            {"transaction_id": 4, "tx_datetime": 13, "customer_id": 3, "terminal_id": 4, "tx_amount": 2.0}]
    batch = interactions_of_rows(FRAUD, "transactions", rows)
    assert {i: str(e) for i, e in batch.errors.items()} == {
        1: 'transactions.customer_id: expected an integer, got the text "three"',
        2: "transactions.tx_amount: expected a finite number, got nan"}
    assert [h.source.tolist() for h in batch.hops] == [[0, 3], [0, 3]]
    assert batch.hops[0].entity.dtype == np.int64 and batch.hops[1].entity.tolist() == [4, 4]
    assert batch.window_rows == 4
