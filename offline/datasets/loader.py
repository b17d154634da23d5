"""Load transactions in the published simulator schema from parquet or CSV, validated.

Every rejection raises :class:`DatasetError` whose message starts with the offending column,
for: a missing column, a wrong dtype, nulls, unparseable timestamps, duplicate primary keys, and
values outside the serving plan's constraints (e.g. ``tx_amount`` ``min: 0``): the same rule
function (:func:`schemas.values.check_column`) refuses them on the HTTP path.
Naive timestamps are taken as UTC; zone-aware ones are converted to UTC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from offline.datasets.base import NS_PER_DAY, NS_PER_SECOND, RelationalDataset
from offline.datasets.fraud import PUBLISHED_COLUMNS, normalise
from schemas.plan import ServingPlan
from schemas.plan_loading import builtin_plan
from schemas.values import RowError, TimestampWindow, check_column

REQUIRED = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")
# Derivable when absent: time offsets from the first day's midnight; scenario 0 ("unknown").
OPTIONAL = ("TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD_SCENARIO")
INTEGER_COLUMNS = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD", "TX_TIME_SECONDS",
                   "TX_TIME_DAYS", "TX_FRAUD_SCENARIO")


class DatasetError(ValueError):
    """Bad input data; ``column`` names the offending column."""

    def __init__(self, column: str, message: str):
        self.column = column
        super().__init__(f"column {column}: {message}")


def read_transactions_file(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--transactions: no such file {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".gz") or path.name.lower().endswith(".csv.gz"):
        return pd.read_csv(path)
    if suffix in (".pkl", ".pickle"):
        raise ValueError(f"{path}: pickles are not loaded (unsafe); convert to parquet or CSV")
    raise ValueError(f"{path}: unknown format {suffix!r}; expected .parquet or .csv")


def validate_transactions(df: pd.DataFrame, plan: ServingPlan | None = None, *, now_ns: int | None = None,
                          window: TimestampWindow | None = None) -> pd.DataFrame:
    """Check and coerce a frame in the published schema; returns all nine columns.

    ``plan`` (default: the built-in fraud plan) supplies the value constraints of the
    transactions table; with ``now_ns`` and ``window`` the timestamps must also lie in the
    plausibility window the scorer applies (off by default: training data is historical).
    """
    plan = plan or builtin_plan("fraud")
    for col in REQUIRED:
        if col not in df.columns:
            raise DatasetError(col, f"missing (required columns: {', '.join(REQUIRED)}; found: {', '.join(map(str, df.columns))})")
    out = pd.DataFrame(index=range(len(df)))
    for col in REQUIRED + OPTIONAL:
        if col not in df.columns:
            continue
        values = df[col].reset_index(drop=True)
        if values.isna().any():
            first = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DatasetError(col, f"{int(values.isna().sum())} null value(s), first at row {first}")
        if col == "TX_DATETIME":
            out[col] = _parse_datetime(values)
        elif col == "TX_AMOUNT":
            if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                raise DatasetError(col, f"expected a numeric dtype, got {values.dtype} (e.g. {values.iloc[0]!r})")
            if not np.isfinite(values.to_numpy(np.float64)).all():
                raise DatasetError(col, "non-finite amounts")
            out[col] = values.astype(np.float64)
        else:
            out[col] = _as_integer(col, values)
    _check_plan_rules(plan, out, now_ns, window)
    if not out["TX_FRAUD"].isin([0, 1]).all():
        bad = out.loc[~out["TX_FRAUD"].isin([0, 1]), "TX_FRAUD"].iloc[0]
        raise DatasetError("TX_FRAUD", f"expected 0/1 labels, got {bad!r}")
    dup = out["TRANSACTION_ID"].duplicated()
    if dup.any():
        raise DatasetError("TRANSACTION_ID", f"duplicate primary key {int(out.loc[dup, 'TRANSACTION_ID'].iloc[0])} "
                                             f"({int(dup.sum())} duplicate row(s))")
    ns = out["TX_DATETIME"].to_numpy().view(np.int64)
    day0 = ns.min() - ns.min() % NS_PER_DAY if len(ns) else 0
    if "TX_TIME_SECONDS" not in out:
        out["TX_TIME_SECONDS"] = (ns - day0) // NS_PER_SECOND
    if "TX_TIME_DAYS" not in out:
        out["TX_TIME_DAYS"] = (ns - day0) // NS_PER_DAY
    if "TX_FRAUD_SCENARIO" not in out:
        out["TX_FRAUD_SCENARIO"] = np.zeros(len(out), np.int64)
    return out[list(PUBLISHED_COLUMNS)]


def _check_plan_rules(plan: ServingPlan, out: pd.DataFrame, now_ns: int | None,
                      window: TimestampWindow | None) -> None:
    """The plan's value rules on whole columns (plan column ``tx_amount`` = published ``TX_AMOUNT``)."""
    table = plan.fact_table
    for column, dtype in plan.fact.columns.items():
        published = column.upper()
        if published not in out:
            continue
        values = out[published].to_numpy()
        if dtype == "timestamp":
            values = values.astype("datetime64[ns]").view(np.int64)
        try:
            check_column(plan, table, column, values, field=published, now_ns=now_ns, window=window)
        except RowError as exc:
            raise DatasetError(published, str(exc).split(": ", 1)[1]) from None


def _as_integer(col: str, values: pd.Series) -> pd.Series:
    if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(np.int64)
    if pd.api.types.is_float_dtype(values):
        arr = values.to_numpy(np.float64)
        if np.all(arr == np.round(arr)):
            return pd.Series(arr.astype(np.int64))
        raise DatasetError(col, f"expected integers, got non-integral value {arr[arr != np.round(arr)][0]!r}")
    raise DatasetError(col, f"expected an integer dtype, got {values.dtype} (e.g. {values.iloc[0]!r})")


def _parse_datetime(values: pd.Series) -> pd.Series:
    col = "TX_DATETIME"
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    elif pd.api.types.is_numeric_dtype(values):
        raise DatasetError(col, f"expected timestamps or ISO-8601 text, got numbers ({values.dtype}); "
                                "numeric seconds belong in TX_TIME_SECONDS")
    else:
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        bad = parsed.isna()
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(col, f"unparseable timestamp {values.iloc[first]!r} at row {first} "
                                    f"({int(bad.sum())} bad value(s))")
    if getattr(parsed.dtype, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


def load_transactions(path: str | Path) -> RelationalDataset:
    """``--transactions PATH`` -> the normalised fraud dataset."""
    return normalise(validate_transactions(read_transactions_file(path)))
