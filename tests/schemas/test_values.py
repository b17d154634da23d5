"""The contract's value rules (schemas.values): timestamp units and plausibility window, integer
ids, plan constraints; plan fields time_unit / constraints; plain-word messages. Hypothesis
properties cover the rules over generated values (the clock is injected: no sleeping)."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.plan import NS_PER, PlanError
from schemas.plan_loading import builtin_plan, parse_plan
from schemas.values import RowError, TimestampWindow, check_column, check_row, describe, timestamp_ns

NOW = 1_780_000_000_000_000_000  # the injected server clock (2026-05-28)
DAY = NS_PER["days"]
WINDOW = TimestampWindow(max_past_ns=10_958 * DAY, max_future_ns=NS_PER["hours"] * 24)
LO, HI = WINDOW.bounds(NOW)
# What a message must never show: Python type names, object reprs, exception class names.
INTERNALS = re.compile(r"NoneType|object at 0x|<class |Traceback|\b(RowError|ValueError|TypeError|KeyError)\b|\bb'")


@pytest.fixture(scope="module")
def fraud():
    return builtin_plan("fraud")


def plan_with(unit: str | None = None, constraints: dict | None = None):
    raw = builtin_plan("fraud").to_dict()
    tx = raw["tables"]["transactions"]
    tx.pop("constraints", None)
    if unit is not None:
        tx["time_unit"] = unit
    if constraints is not None:
        tx["constraints"] = constraints
    return parse_plan(raw)


def good_row(**changes):
    row = {"transaction_id": 1, "tx_datetime": NOW - 5 * DAY, "customer_id": 7, "terminal_id": 11,
           "tx_amount": 12.5}
    row.update(changes)
    return row


def refused(plan, row) -> RowError:
    with pytest.raises(RowError) as err:
        check_row(plan, "transactions", row, now_ns=NOW, window=WINDOW)
    assert not INTERNALS.search(str(err.value)), str(err.value)
    return err.value


# ----- the plan: time_unit and constraints ------------------------------------------------------

def test_existing_plans_stay_valid_and_default_to_nanoseconds():
    recsys = builtin_plan("recsys")
    assert recsys.fact.time_unit == "nanoseconds" and recsys.fact.constraints == {}
    fraud = builtin_plan("fraud")
    assert fraud.fact.time_unit == "nanoseconds"
    assert fraud.fact.constraints["tx_amount"].min == 0
    assert parse_plan(fraud.to_dict()).fact.constraints == fraud.fact.constraints  # round trip
    assert plan_with(constraints={}).fingerprint() == fraud.fingerprint()  # constraints shape no tensor


@pytest.mark.parametrize("change, field", [
    ({"time_unit": "fortnights"}, "tables.transactions.time_unit"),
    ({"constraints": {"colour": {"min": 0}}}, "tables.transactions.constraints.colour"),
    ({"constraints": {"tx_datetime": {"min": 0}}}, "tables.transactions.constraints.tx_datetime"),
    ({"constraints": {"tx_amount": {"min": "zero"}}}, "tables.transactions.constraints.tx_amount.min"),
    ({"constraints": {"tx_amount": {"min": 5, "max": 1}}}, "tables.transactions.constraints.tx_amount"),
    ({"constraints": {"tx_amount": {"least": 0}}}, "tables.transactions.constraints.tx_amount.least"),
    ({"constraints": {"tx_amount": {}}}, "tables.transactions.constraints.tx_amount"),
])
def test_bad_time_unit_or_constraint_names_the_plan_field(change, field):
    raw = builtin_plan("fraud").to_dict()
    raw["tables"]["transactions"].update(change)
    with pytest.raises(PlanError) as err:
        parse_plan(raw)
    assert err.value.field == field


# ----- one test per lenient input of the issue ----------------------------------------------------

def test_seconds_read_as_nanoseconds_is_refused_with_a_unit_hint(fraud):
    err = refused(fraud, good_row(tx_datetime=NOW // NS_PER["seconds"]))
    assert err.field == "transactions.tx_datetime"
    assert "1970-01-01" in str(err) and "looks like seconds" in str(err)


@pytest.mark.parametrize("value", [0, -1, -NOW])
def test_epoch_zero_and_negative_timestamps_are_refused(fraud, value):
    err = refused(fraud, good_row(tx_datetime=value))
    assert err.field == "transactions.tx_datetime" and "before the server clock" in str(err)


def test_ten_years_ahead_is_refused(fraud):
    for value in (NOW + 3_652 * DAY, "2036-06-01T00:00:00Z"):
        err = refused(fraud, good_row(tx_datetime=value))
        assert err.field == "transactions.tx_datetime" and "after the server clock" in str(err)


def test_anchor_time_follows_the_same_rules(fraud):
    err = refused(fraud, good_row(anchor_time=NOW // NS_PER["milliseconds"]))
    assert err.field == "anchor_time" and "looks like milliseconds" in str(err)
    assert check_row(fraud, "transactions", good_row(anchor_time=None), now_ns=NOW, window=WINDOW)["anchor_time"] is None


def test_float_ids_are_refused(fraud):
    err = refused(fraud, good_row(customer_id=290.0))
    assert err.field == "transactions.customer_id" and "expected an integer, got the number 290.0" in str(err)
    assert refused(fraud, good_row(terminal_id=True)).field == "transactions.terminal_id"


@pytest.mark.parametrize("amount, word", [(-100, "below the minimum"), (-0.01, "below the minimum"),
                                          (3.4e38, "above the maximum")])
def test_amounts_outside_the_plan_constraint_are_refused(fraud, amount, word):
    err = refused(fraud, good_row(tx_amount=amount))
    assert err.field == "transactions.tx_amount" and word in str(err) and "constraints.tx_amount" in str(err)


def test_null_is_called_null_not_missing(fraud):
    err = refused(fraud, good_row(tx_amount=None))
    assert err.field == "transactions.tx_amount"
    assert "null" in str(err) and "missing" not in str(err)


@pytest.mark.parametrize("value, words", [
    (None, "null"), (True, "a boolean (true)"), (5, "the integer 5"), (2.5, "the number 2.5"),
    ("x", 'the text "x"'), (b"ab", "binary data (2 bytes)"), ({}, "an object"), ([1], "a list"),
    (object(), "a value of an unsupported kind"),
])
def test_values_are_described_in_plain_words(value, words):
    assert describe(value) == words and not INTERNALS.search(describe(value))


def test_iso_strings_and_declared_units_are_accepted():
    fraud = plan_with(constraints={"tx_amount": {"min": 0}})
    iso = "2026-05-20T10:00:00.5Z"
    out = check_row(fraud, "transactions", good_row(tx_datetime=iso), now_ns=NOW, window=WINDOW)
    expected = dt.datetime(2026, 5, 20, 10, 0, 0, 500_000, tzinfo=dt.timezone.utc)
    assert out["tx_datetime"] == int(expected.timestamp()) * 10**9 + 500_000_000
    seconds = plan_with(unit="seconds")
    out = check_row(seconds, "transactions", good_row(tx_datetime=NOW // 10**9), now_ns=NOW, window=WINDOW)
    assert out["tx_datetime"] == NOW  # the declared unit, converted to ns
    err = refused(seconds, good_row(tx_datetime=NOW))  # nanoseconds sent to a seconds plan
    assert "outside the years 1678-2262" in str(err) and "timestamps here are seconds" in str(err)
    millis = plan_with(unit="milliseconds")
    err = refused(millis, good_row(tx_datetime=NOW // 10**9))  # seconds sent to a milliseconds plan
    assert "before the server clock" in str(err) and "looks like seconds" in str(err)
    with pytest.raises(RowError, match="ISO-8601"):
        timestamp_ns("yesterday", "seconds", "t")
    with pytest.raises(RowError, match="the number 1.5"):
        timestamp_ns(1.5, "seconds", "t")


# ----- properties ---------------------------------------------------------------------------------

units = st.sampled_from(["nanoseconds", "microseconds", "milliseconds", "seconds"])


@settings(max_examples=300, deadline=None)
@given(unit=units, sent=st.integers(-(2**62), 2**62))
def test_integer_timestamps_pass_exactly_when_inside_the_window(unit, sent):
    plan = plan_with(unit=unit)
    ns = sent * NS_PER[unit]
    row = good_row(tx_datetime=sent)
    if not -(2**63) <= ns < 2**63:
        err = refused(plan, row)
        assert err.field == "transactions.tx_datetime"
    elif LO <= ns <= HI:
        assert check_row(plan, "transactions", row, now_ns=NOW, window=WINDOW)["tx_datetime"] == ns
    else:
        err = refused(plan, row)
        assert err.field == "transactions.tx_datetime" and "server clock" in str(err)


@settings(max_examples=200, deadline=None)
@given(moment=st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2199, 12, 31)), unit=units)
def test_iso_strings_mean_the_same_instant_whatever_the_unit(moment, unit):
    plan = plan_with(unit=unit)
    ns = timestamp_ns(moment.isoformat() + "Z", unit, "t")
    delta = moment.replace(tzinfo=dt.timezone.utc) - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    assert ns == (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    row = good_row(tx_datetime=moment.isoformat())
    if LO <= ns <= HI:
        assert check_row(plan, "transactions", row, now_ns=NOW, window=WINDOW)["tx_datetime"] == ns
    else:
        assert refused(plan, row).field == "transactions.tx_datetime"


@settings(max_examples=300, deadline=None)
@given(lo=st.floats(-1e6, 1e6), span=st.floats(0, 1e6), amount=st.floats(-3e6, 3e6) | st.integers(-10**7, 10**7))
def test_amounts_pass_exactly_when_inside_the_plan_bounds(lo, span, amount):
    plan = plan_with(constraints={"tx_amount": {"min": lo, "max": lo + span}})
    row = good_row(tx_amount=amount)
    if lo <= amount <= lo + span:
        assert check_row(plan, "transactions", row, now_ns=NOW, window=WINDOW)["tx_amount"] == amount
    else:
        assert refused(plan, row).field == "transactions.tx_amount"


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False) | st.text(max_size=5) | st.booleans() | st.none() | st.lists(st.integers(), max_size=2))
def test_ids_that_are_not_integers_are_always_refused(fraud, value):
    err = refused(fraud, good_row(customer_id=value))
    assert err.field == "transactions.customer_id"


@settings(max_examples=100, deadline=None)
@given(ids=st.integers(-(2**63), 2**63 - 1))
def test_integer_ids_pass(fraud, ids):
    assert check_row(fraud, "transactions", good_row(customer_id=ids), now_ns=NOW, window=WINDOW)["customer_id"] == ids


def test_check_column_on_a_whole_column_names_the_first_bad_row(fraud):
    import numpy as np
    check_column(fraud, "transactions", "tx_amount", np.array([0.0, 1.0, 5e8]))
    with pytest.raises(RowError) as err:
        check_column(fraud, "transactions", "tx_amount", np.array([1.0, -2.0, -3.0]), field="TX_AMOUNT")
    assert err.value.field == "TX_AMOUNT" and "row 1: -2.0 is below the minimum" in str(err.value)
    assert "(2 bad value(s))" in str(err.value)
    times = np.array([NOW - DAY, 0], np.int64)
    check_column(fraud, "transactions", "tx_datetime", times)  # no window given: not checked
    with pytest.raises(RowError, match="row 1: 1970-01-01"):
        check_column(fraud, "transactions", "tx_datetime", times, now_ns=NOW, window=WINDOW)


def test_the_window_itself_is_validated():
    with pytest.raises(ValueError):
        TimestampWindow(max_past_ns=0, max_future_ns=0)
    with pytest.raises(ValueError):
        TimestampWindow(max_past_ns=DAY, max_future_ns=-1)
