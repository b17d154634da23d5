"""Seeded, vectorised generator of card transactions with graph-shaped fraud, and the
normalised fraud dataset.

Follows the published transaction simulator description (see docs/offline.md): customers and
terminals on a 100x100 square, each customer pays at the terminals within radius ``r``; per day
Poisson(customer mean) transactions around noon; three fraud scenarios (amount > 220;
compromised terminals for 28 days; compromised credentials for 14 days with a third of the
transactions multiplied by 5). Everything is numpy arrays — no per-transaction Python loop —
so the published scale (5,000 x 10,000 x 183 days, ~1.75 M rows) takes seconds.

The generator writes exactly the published column schema (``PUBLISHED_COLUMNS``); the loader
(:mod:`offline.datasets.loader`) reads it back and :func:`normalise` maps it to the plan's
tables (``transactions``, ``customers``, ``terminals``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from offline.datasets.base import NS_PER_DAY, NS_PER_SECOND, RelationalDataset, TableMeta

# The published column schema, in order, with the dtypes the generator writes.
PUBLISHED_COLUMNS: dict[str, str] = {
    "TRANSACTION_ID": "int64",
    "TX_DATETIME": "datetime64[ns]",
    "CUSTOMER_ID": "int64",
    "TERMINAL_ID": "int64",
    "TX_AMOUNT": "float64",
    "TX_TIME_SECONDS": "int64",
    "TX_TIME_DAYS": "int64",
    "TX_FRAUD": "int64",
    "TX_FRAUD_SCENARIO": "int64",
}

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class FraudSimConfig:
    n_customers: int = 5_000
    n_terminals: int = 10_000
    n_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0
    seed: int = 0
    # scenario parameters (published values)
    amount_threshold: float = 220.0
    compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    compromised_customers_per_day: int = 3
    customer_compromise_days: int = 14
    customer_fraud_share: float = 1 / 3
    customer_fraud_multiplier: float = 5.0

    def to_dict(self) -> dict:
        return asdict(self)


# Unit-test size: seconds for everything downstream (one compromise per day keeps fraud < 100 %).
TINY = FraudSimConfig(n_customers=50, n_terminals=100, n_days=30, radius=20.0,
                      compromised_terminals_per_day=1, compromised_customers_per_day=1)


def _terminals_within(cust_xy: np.ndarray, term_xy: np.ndarray, radius: float, chunk: int = 512):
    """CSR (indptr, terminal indices) of the terminals within ``radius`` of each customer."""
    indices, counts = [], []
    for lo in range(0, len(cust_xy), chunk):
        d2 = ((cust_xy[lo:lo + chunk, None, :] - term_xy[None, :, :]) ** 2).sum(-1)
        rows, cols = np.nonzero(d2 < radius * radius)
        indices.append(cols)
        counts.append(np.bincount(rows, minlength=min(chunk, len(cust_xy) - lo)))
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    indptr = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, (np.concatenate(indices) if indices else np.zeros(0, np.int64))


def _active_draws(n_entities: int, n_days: int, draws_per_day: int, duration: int,
                  rng: np.random.Generator) -> np.ndarray:
    """(entity, day) -> number of compromise draws covering that day (difference array)."""
    diff = np.zeros((n_entities, n_days + duration + 1), np.int32)
    k = min(draws_per_day, n_entities)
    for day in range(n_days):  # one tiny draw per day (without replacement within a day)
        drawn = rng.choice(n_entities, size=k, replace=False)
        diff[drawn, day] += 1
        diff[drawn, day + duration] -= 1
    return np.cumsum(diff, axis=1)[:, :n_days]


def generate_transactions(cfg: FraudSimConfig = FraudSimConfig()) -> pd.DataFrame:
    """The simulated transactions in the published schema, sorted by time."""
    rng = np.random.default_rng(cfg.seed)
    nc, nt, nd = cfg.n_customers, cfg.n_terminals, cfg.n_days
    cust_xy = rng.uniform(0, 100, size=(nc, 2))
    mean_amount = rng.uniform(5, 100, size=nc)
    std_amount = mean_amount / 2
    mean_tx_per_day = rng.uniform(0, 4, size=nc)
    term_xy = rng.uniform(0, 100, size=(nt, 2))
    indptr, term_idx = _terminals_within(cust_xy, term_xy, cfg.radius)
    n_avail = np.diff(indptr)

    # Transactions: Poisson count per (customer, day); customers without terminals pay nowhere.
    counts = rng.poisson(np.repeat(mean_tx_per_day[:, None], nd, axis=1))
    counts[n_avail == 0] = 0
    flat = counts.ravel()
    cust = np.repeat(np.repeat(np.arange(nc), nd), flat)
    day = np.repeat(np.tile(np.arange(nd), nc), flat)
    secs = np.rint(rng.normal(SECONDS_PER_DAY / 2, 20_000, size=len(cust))).astype(np.int64)
    amount = rng.normal(mean_amount[cust], std_amount[cust])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[cust[negative]])
    amount = np.round(amount, 2)
    pick = np.floor(rng.uniform(size=len(cust)) * n_avail[cust]).astype(np.int64)
    term = term_idx[indptr[cust] + np.minimum(pick, n_avail[cust] - 1)]
    keep = (secs > 0) & (secs < SECONDS_PER_DAY)  # draws outside the day are dropped
    cust, day, secs, amount, term = cust[keep], day[keep], secs[keep], amount[keep], term[keep]

    # Scenario 1: large amounts.
    fraud = (amount > cfg.amount_threshold).astype(np.int64)
    scenario = fraud.copy()
    # Scenario 2: compromised terminals (all their transactions for 28 days).
    term_comp = _active_draws(nt, nd, cfg.compromised_terminals_per_day, cfg.terminal_compromise_days, rng)
    hit2 = term_comp[term, day] > 0
    fraud[hit2], scenario[hit2] = 1, 2
    # Scenario 3: compromised credentials; each covering draw independently takes the
    # transaction with probability 1/3 (the published "one third of the transactions").
    cust_comp = _active_draws(nc, nd, cfg.compromised_customers_per_day, cfg.customer_compromise_days, rng)
    hits3 = rng.binomial(cust_comp[cust, day], cfg.customer_fraud_share)
    hit3 = hits3 > 0
    amount[hit3] = np.round(amount[hit3] * cfg.customer_fraud_multiplier ** hits3[hit3], 2)
    fraud[hit3], scenario[hit3] = 1, 3

    tx_seconds = day.astype(np.int64) * SECONDS_PER_DAY + secs
    order = np.lexsort((cust, tx_seconds))  # time, then customer: deterministic ties
    start_ns = pd.Timestamp(cfg.start_date).value
    tx_seconds = tx_seconds[order]
    df = pd.DataFrame({
        "TRANSACTION_ID": np.arange(len(order), dtype=np.int64),
        "TX_DATETIME": pd.to_datetime(start_ns + tx_seconds * NS_PER_SECOND, unit="ns"),
        "CUSTOMER_ID": cust[order].astype(np.int64),
        "TERMINAL_ID": term[order].astype(np.int64),
        "TX_AMOUNT": amount[order].astype(np.float64),
        "TX_TIME_SECONDS": tx_seconds,
        "TX_TIME_DAYS": day[order].astype(np.int64),
        "TX_FRAUD": fraud[order],
        "TX_FRAUD_SCENARIO": scenario[order],
    })
    df["TX_DATETIME"] = df["TX_DATETIME"].astype("datetime64[ns]")
    return df


def write_transactions(df: pd.DataFrame, path: str, fmt: str = "parquet") -> None:
    """Write the published schema as parquet (default) or CSV (TX_DATETIME as text)."""
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"column {missing[0]}: missing from the frame to write")
    df = df[list(PUBLISHED_COLUMNS)]
    if fmt == "parquet":
        df.to_parquet(path, index=False, coerce_timestamps="us", allow_truncated_timestamps=False)
    elif fmt == "csv":
        out = df.copy()
        out["TX_DATETIME"] = out["TX_DATETIME"].dt.strftime("%Y-%m-%d %H:%M:%S")
        out.to_csv(path, index=False)
    else:
        raise ValueError(f"format: expected 'parquet' or 'csv', got {fmt!r}")


# ----- normalised dataset (names follow schemas/plans/fraud.yaml) ---------------------------

FRAUD_META = {
    "customers": TableMeta("customers", primary_key="customer_id"),
    "terminals": TableMeta("terminals", primary_key="terminal_id"),
    "transactions": TableMeta(
        "transactions", primary_key="transaction_id", time_column="tx_datetime",
        foreign_keys={"customer_id": "customers", "terminal_id": "terminals"},
        label_columns=("tx_fraud", "tx_fraud_scenario"),
    ),
}


def normalise(raw: pd.DataFrame, customer_ids=None, terminal_ids=None) -> RelationalDataset:
    """Published schema -> the plan's tables. ``tx_datetime`` becomes int64 ns (UTC)."""
    tx_dt = raw["TX_DATETIME"]
    if getattr(tx_dt.dtype, "tz", None) is not None:
        tx_dt = tx_dt.dt.tz_convert("UTC").dt.tz_localize(None)
    tx = pd.DataFrame({
        "transaction_id": raw["TRANSACTION_ID"].to_numpy(np.int64),
        "tx_datetime": tx_dt.astype("datetime64[ns]").to_numpy().view(np.int64),
        "customer_id": raw["CUSTOMER_ID"].to_numpy(np.int64),
        "terminal_id": raw["TERMINAL_ID"].to_numpy(np.int64),
        "tx_amount": raw["TX_AMOUNT"].to_numpy(np.float32),
        "tx_fraud": raw["TX_FRAUD"].to_numpy(np.int64),
        "tx_fraud_scenario": raw["TX_FRAUD_SCENARIO"].to_numpy(np.int8),
        "tx_time_seconds": raw["TX_TIME_SECONDS"].to_numpy(np.int64),
        "tx_time_days": raw["TX_TIME_DAYS"].to_numpy(np.int64),
    })
    # A stable time order (ties by id) is what the graph and the windows assume.
    tx = tx.sort_values(["tx_datetime", "transaction_id"], kind="stable").reset_index(drop=True)
    cust = np.union1d(tx["customer_id"].unique(), np.asarray(customer_ids if customer_ids is not None else [], np.int64))
    term = np.union1d(tx["terminal_id"].unique(), np.asarray(terminal_ids if terminal_ids is not None else [], np.int64))
    frames = {
        "customers": pd.DataFrame({"customer_id": cust.astype(np.int64)}),
        "terminals": pd.DataFrame({"terminal_id": term.astype(np.int64)}),
        "transactions": tx,
    }
    return RelationalDataset("fraud", FRAUD_META, frames)


def generate_dataset(cfg: FraudSimConfig = FraudSimConfig()) -> RelationalDataset:
    return normalise(generate_transactions(cfg), np.arange(cfg.n_customers), np.arange(cfg.n_terminals))


def day_start_ns(ds: RelationalDataset) -> int:
    """Midnight (UTC) of the first transaction's day: day 0 of the data."""
    t0 = int(ds.table("transactions")["tx_datetime"].min())
    return t0 - t0 % NS_PER_DAY
