"""Fraud generator (schema, scenarios, reproducibility) and the --transactions loader."""
import numpy as np
import pandas as pd
import pytest

from offline.datasets.fraud import PUBLISHED_COLUMNS, TINY, FraudSimConfig, generate_transactions, write_transactions
from offline.datasets.loader import DatasetError, load_transactions, validate_transactions
from schemas.plan_loading import builtin_plan


@pytest.fixture(scope="module")
def raw():
    return generate_transactions(TINY)


def test_published_schema_and_dtypes(raw):
    assert list(raw.columns) == list(PUBLISHED_COLUMNS)
    assert {c: str(raw[c].dtype) for c in raw.columns} == PUBLISHED_COLUMNS
    assert raw["TRANSACTION_ID"].tolist() == list(range(len(raw)))
    assert raw["TX_DATETIME"].is_monotonic_increasing
    start = pd.Timestamp(TINY.start_date)
    secs = (raw["TX_DATETIME"] - start).dt.total_seconds().astype(np.int64)
    assert (secs == raw["TX_TIME_SECONDS"]).all()
    assert (raw["TX_TIME_SECONDS"] // 86400 == raw["TX_TIME_DAYS"]).all()
    assert raw["TX_TIME_DAYS"].between(0, TINY.n_days - 1).all()
    assert (raw["TX_AMOUNT"] >= 0).all() and (raw["TX_AMOUNT"] == raw["TX_AMOUNT"].round(2)).all()


def test_fraud_scenarios(raw):
    assert ((raw["TX_FRAUD_SCENARIO"] > 0) == (raw["TX_FRAUD"] == 1)).all()
    assert set(raw["TX_FRAUD_SCENARIO"].unique()) <= {0, 1, 2, 3}
    # Scenario 1: large amounts (and every non-fraud is at most the threshold).
    assert (raw.loc[raw.TX_FRAUD_SCENARIO == 1, "TX_AMOUNT"] > TINY.amount_threshold).all()
    assert (raw.loc[raw.TX_FRAUD == 0, "TX_AMOUNT"] <= TINY.amount_threshold).all()
    # Scenario 2 compromises a terminal for whole days: every transaction at a (terminal, day)
    # that has a scenario-2 fraud is fraud.
    s2 = raw.loc[raw.TX_FRAUD_SCENARIO == 2, ["TERMINAL_ID", "TX_TIME_DAYS"]].drop_duplicates()
    assert len(s2) > 0
    same = raw.merge(s2, on=["TERMINAL_ID", "TX_TIME_DAYS"])
    assert (same["TX_FRAUD"] == 1).all()
    # Scenario 3: only drawn customers (at most one draw per day in TINY); amounts multiplied.
    s3 = raw.loc[raw.TX_FRAUD_SCENARIO == 3]
    assert 0 < s3["CUSTOMER_ID"].nunique() <= TINY.n_days * TINY.compromised_customers_per_day
    assert s3["TX_AMOUNT"].mean() > 2 * raw.loc[raw.TX_FRAUD == 0, "TX_AMOUNT"].mean()


def test_reproducible_by_seed(raw):
    pd.testing.assert_frame_equal(raw, generate_transactions(TINY))
    other = generate_transactions(FraudSimConfig(**{**TINY.to_dict(), "seed": 1}))
    assert not other["TX_AMOUNT"].head(100).equals(raw["TX_AMOUNT"].head(100))


def test_published_scale_matches_the_note():
    df = generate_transactions(FraudSimConfig())  # ~4 s, ~1.8 M rows
    assert 1_700_000 <= len(df) <= 1_850_000, len(df)
    assert 0.0075 <= df["TX_FRAUD"].mean() <= 0.0095, df["TX_FRAUD"].mean()
    assert df["CUSTOMER_ID"].nunique() > 4_900 and df["TERMINAL_ID"].nunique() > 9_900
    assert df["TX_DATETIME"].min() >= pd.Timestamp("2018-04-01")
    assert df["TX_TIME_DAYS"].max() == 182


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_loader_roundtrip_and_plan_names(raw, tmp_path, fmt):
    path = tmp_path / f"tx.{fmt}"
    write_transactions(raw, str(path), fmt)
    ds = load_transactions(path)
    tx = ds.table("transactions")
    plan = builtin_plan("fraud")
    assert set(plan.tables) <= set(ds.table_names)
    for name, spec in plan.tables.items():
        frame = ds.table(name)
        assert frame[spec.primary_key].is_unique
        for col, dtype in spec.columns.items():
            expected = "int64" if dtype == "timestamp" else dtype
            assert str(frame[col].dtype) == expected, (name, col, frame[col].dtype)
        assert dict(ds.meta[name].foreign_keys) == dict(spec.foreign_keys)
        assert ds.meta[name].time_column == spec.time_column
    assert str(tx["tx_fraud_scenario"].dtype) == "int8"
    np.testing.assert_array_equal(tx["tx_datetime"].to_numpy(), raw["TX_DATETIME"].to_numpy().view(np.int64))
    np.testing.assert_allclose(tx["tx_amount"], raw["TX_AMOUNT"].astype(np.float32))


def _write(df, tmp_path, fmt="csv"):
    path = tmp_path / f"bad.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("column", ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"])
def test_loader_missing_column(raw, tmp_path, column):
    with pytest.raises(DatasetError, match=f"column {column}: missing") as exc:
        load_transactions(_write(raw.drop(columns=[column]), tmp_path, "parquet"))
    assert exc.value.column == column


def test_loader_optional_columns_are_derived(raw):
    out = validate_transactions(raw.drop(columns=["TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD_SCENARIO"]))
    assert (out["TX_TIME_DAYS"] == raw["TX_TIME_DAYS"]).all()
    assert (out["TX_TIME_SECONDS"] == raw["TX_TIME_SECONDS"]).all()


@pytest.mark.parametrize("column,value", [("CUSTOMER_ID", "abc"), ("TERMINAL_ID", "t-1"), ("TX_AMOUNT", "ten"),
                                          ("TRANSACTION_ID", 1.5), ("TX_FRAUD", "yes")])
def test_loader_wrong_dtype(raw, tmp_path, column, value):
    bad = raw.head(20).copy()
    bad[column] = bad[column].astype(object)
    bad.loc[3, column] = value
    with pytest.raises(DatasetError, match=f"column {column}: expected") as exc:
        load_transactions(_write(bad, tmp_path))
    assert exc.value.column == column


def test_loader_unparseable_timestamp(raw, tmp_path):
    bad = raw.head(20).copy()
    bad["TX_DATETIME"] = bad["TX_DATETIME"].astype(str)
    bad.loc[5, "TX_DATETIME"] = "not a time"
    with pytest.raises(DatasetError, match="column TX_DATETIME: unparseable timestamp 'not a time' at row 5"):
        load_transactions(_write(bad, tmp_path))


def test_loader_duplicate_primary_key(raw, tmp_path):
    bad = raw.head(20).copy()
    bad.loc[7, "TRANSACTION_ID"] = 3
    with pytest.raises(DatasetError, match="column TRANSACTION_ID: duplicate primary key 3"):
        load_transactions(_write(bad, tmp_path, "parquet"))


def test_loader_nulls_and_labels(raw, tmp_path):
    bad = raw.head(20).copy()
    bad["TERMINAL_ID"] = bad["TERMINAL_ID"].astype("float64")
    bad.loc[2, "TERMINAL_ID"] = np.nan
    with pytest.raises(DatasetError, match="column TERMINAL_ID: 1 null value"):
        load_transactions(_write(bad, tmp_path, "parquet"))
    bad = raw.head(20).copy()
    bad.loc[2, "TX_FRAUD"] = 2
    with pytest.raises(DatasetError, match="column TX_FRAUD: expected 0/1"):
        load_transactions(_write(bad, tmp_path, "parquet"))


def test_loader_timezones_become_utc(raw):
    df = raw.head(5).copy()
    df["TX_DATETIME"] = df["TX_DATETIME"].dt.tz_localize("UTC").dt.tz_convert("Europe/Brussels").astype(str)
    out = validate_transactions(df)
    assert (out["TX_DATETIME"].to_numpy() == raw.head(5)["TX_DATETIME"].to_numpy()).all()


def test_upto_masks_rows_and_labels(raw):
    from offline.datasets.fraud import normalise

    ds = normalise(raw)
    tx = ds.table("transactions")
    cut = int(tx["tx_datetime"].iloc[len(tx) // 2])
    delay = 3 * 86_400 * 10**9
    view = ds.upto(cut, delay).table("transactions")
    assert (view["tx_datetime"] < cut).all() and len(view) == int((tx["tx_datetime"] < cut).sum())
    hidden = view["tx_datetime"] >= cut - delay
    assert view.loc[hidden, "tx_fraud"].isna().all() and view.loc[~hidden, "tx_fraud"].notna().all()
    with pytest.raises(ValueError):
        view["tx_fraud"].to_numpy(np.int64)  # masked labels cannot silently become numbers
