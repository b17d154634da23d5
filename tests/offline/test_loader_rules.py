"""The serving plan's value rules hold offline too: validate_transactions refuses training data
that /v1/score would refuse (same function, schemas.values.check_column)."""
from __future__ import annotations

import pandas as pd
import pytest

from offline.datasets.loader import DatasetError, validate_transactions
from schemas.plan import NS_PER
from schemas.plan_loading import builtin_plan, parse_plan
from schemas.values import TimestampWindow


def frame(amounts, times=None):
    n = len(amounts)
    return pd.DataFrame({
        "TRANSACTION_ID": range(n), "CUSTOMER_ID": [1] * n, "TERMINAL_ID": [2] * n, "TX_FRAUD": [0] * n,
        "TX_DATETIME": pd.to_datetime(times or [f"2024-01-0{i + 1} 10:00" for i in range(n)], format="mixed"),
        "TX_AMOUNT": amounts,
    })


def test_the_built_in_plan_refuses_a_negative_amount():
    assert len(validate_transactions(frame([1.0, 0.0, 99.5]))) == 3
    with pytest.raises(DatasetError) as err:
        validate_transactions(frame([1.0, -100.0, 5.0]))
    assert err.value.column == "TX_AMOUNT"
    assert "row 1: -100.0 is below the minimum of 0 set by the plan" in str(err.value)


def test_a_plans_own_constraint_is_what_is_enforced():
    raw = builtin_plan("fraud").to_dict()
    raw["tables"]["transactions"]["constraints"] = {"tx_amount": {"max": 50}}
    capped = parse_plan(raw)
    validate_transactions(frame([-3.0, 10.0]), capped)  # no minimum in this plan
    with pytest.raises(DatasetError, match="row 1: 3.4e\\+38 is above the maximum of 50"):
        validate_transactions(frame([10.0, 3.4e38]), capped)


def test_an_optional_window_refuses_implausible_training_timestamps():
    now = pd.Timestamp("2024-02-01").value
    window = TimestampWindow(max_past_ns=30 * NS_PER["days"], max_future_ns=NS_PER["days"])
    df = frame([1.0, 2.0], times=["2024-01-20 10:00", "1970-01-01 00:00:01"])
    validate_transactions(df)  # historical data: no window unless asked for
    with pytest.raises(DatasetError) as err:
        validate_transactions(df, now_ns=now, window=window)
    assert err.value.column == "TX_DATETIME" and "row 1: 1970-01-01T00:00:01Z" in str(err.value)
