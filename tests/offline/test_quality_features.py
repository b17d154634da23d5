"""The LightGBM baseline's engineered features, generic over the spec.

Until the fraud-only function was removed, a test asserted these equal the published features on
the tiny fraud project (all 3,110 rows, 15 columns); the hand-computed frame below keeps that
expectation (the published names in the comments)."""
import numpy as np
import pandas as pd
import pytest

from offline.data.adapters import fraud_project
from offline.data.spec import load_project
from offline.datasets.base import NS_PER_DAY
from offline.datasets.fraud import TINY
from offline.datasets.synthetic_bank import TINY_BANK, write_bank_project
from offline.quality.features import FactColumns, engineered_features

H = 3600 * 10**9
DAY0 = 1_522_540_800 * 10**9  # 2018-04-01T00:00Z, a Sunday
COLS = FactColumns(time="at", own=("amount",), numeric=("amount",), entities=("who", "where"),
                   labels=(("bad", NS_PER_DAY),))


def test_features_by_hand():
    rows = [(1, 1, 0, 10.0, 1), (1, 1, 12, 20.0, 0), (1, 2, 36, 30.0, 0), (2, 1, 72, 40.0, 0)]
    df = pd.DataFrame(rows, columns=["who", "where", "hours", "amount", "bad"])
    df["at"] = DAY0 + (df.pop("hours") * H).astype(np.int64)
    f = engineered_features(df, COLS)
    assert list(f["amount"]) == [10, 20, 30, 40]
    assert list(f["who_count_1d"]) == [1, 2, 1, 1]  # customer_nb_tx_1d: (t - 1 day, t], the row included
    assert list(f["who_mean_amount_1d"]) == [10, 15, 30, 40]  # customer_avg_amount_1d
    assert list(f["who_count_7d"]) == [1, 2, 3, 1]
    assert f["who_mean_amount_7d"].iloc[2] == pytest.approx(20)
    # where=1 at hour 72 with a 1-day delay: the 1-day window (24h, 48h] is empty; the 7-day window
    # (-120h, 48h] holds hours 0 (bad) and 12 -> rate 0.5 (terminal_risk_7d). At hour 12 nothing
    # is old enough.
    assert f["where_bad_count_1d"].iloc[3] == 0 and f["where_bad_rate_1d"].iloc[3] == 0
    assert f["where_bad_count_7d"].iloc[3] == 2 and f["where_bad_rate_7d"].iloc[3] == pytest.approx(0.5)
    assert f["where_bad_count_7d"].iloc[1] == 0
    # who=1 at hour 36: its rows at 0 (bad) and 12 are older than 36 - 24 -> 1 of 2
    assert f["who_bad_count_7d"].iloc[2] == 2 and f["who_bad_rate_7d"].iloc[2] == pytest.approx(0.5)
    assert list(f["at_night"]) == [1, 0, 0, 1]  # tx_during_night: before 6:00 (inclusive)
    assert list(f["at_weekend"]) == [1, 1, 0, 0]  # tx_during_weekend
    assert list(f["at_hour"]) == [0, 12, 12, 0]
    assert f.shape[1] == 1 + 3 + 2 * 3 * (2 + 2)


def test_columns_come_from_the_spec(tmp_path):
    fraud = FactColumns.of(load_project(fraud_project(tmp_path / "fraud", TINY)), "transactions")
    assert fraud == FactColumns("tx_datetime", ("tx_amount",), ("tx_amount",), ("customer_id", "terminal_id"),
                                (("tx_fraud", 7 * NS_PER_DAY),))
    bank = FactColumns.of(load_project(write_bank_project(tmp_path / "bank", TINY_BANK)), "card_payments")
    assert bank.entities == ("account_id", "merchant_id", "device_id") and bank.numeric == ("amount",)
    assert bank.labels == (("is_fraud", 7 * NS_PER_DAY),)
    with pytest.raises(ValueError, match="tables.customers.time_column"):
        FactColumns.of(load_project(tmp_path / "bank" / "project.yaml"), "customers")
