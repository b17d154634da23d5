"""Tiny projects of three schemas (fraud, bank, shop) for the tests that must hold for every schema."""
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from offline.data.sources import load_tables
from offline.data.spec import load_project


def shop_project(out: Path, seed: int = 0) -> Path:
    """Households buying products (a next-item schema, Complete Journey shaped), 35 days."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_h, n_p, n = 40, 60, 3000
    start = pd.Timestamp("2024-03-01", tz="UTC").value
    pd.DataFrame({"household_id": np.arange(n_h) + 1, "income": rng.choice(["lo", "mid", "hi"], n_h)}) \
        .to_parquet(out / "households.parquet")
    pd.DataFrame({"product_id": np.arange(n_p) + 100, "department": rng.choice(["food", "drink"], n_p)}) \
        .to_parquet(out / "products.parquet")
    tx = pd.DataFrame({"transaction_id": np.arange(n), "household_id": rng.integers(1, n_h + 1, n),
                       "product_id": 100 + np.minimum(rng.geometric(0.08, n), n_p) - 1,
                       "ts": pd.to_datetime(start + np.sort(rng.integers(0, 35 * 86_400 * 10**9, n)), utc=True),
                       "quantity": rng.integers(1, 4, n)})
    tx.to_csv(out / "transactions.csv", index=False)  # CSV on purpose: both formats go through sources
    spec = {
        "name": "shop",
        "tables": {
            "households": {"source": "households.parquet", "primary_key": "household_id",
                           "columns": {"household_id": "id", "income": "categorical"}},
            "products": {"source": "products.parquet", "primary_key": "product_id",
                         "columns": {"product_id": "id", "department": "categorical"}},
            "transactions": {"source": "transactions.csv", "primary_key": "transaction_id", "time_column": "ts",
                             "columns": {"transaction_id": "id", "household_id": "id", "product_id": "id",
                                         "ts": "timestamp", "quantity": "numeric"}},
        },
        "links": [{"table": "transactions", "column": "household_id", "references": "households"},
                  {"table": "transactions", "column": "product_id", "references": "products"}],
        "base_tasks": [{"name": "next_products", "kind": "next_item", "entity": "households",
                        "facts": "transactions", "item": "product_id", "horizon": "7 days"}],
        "split": {"test_days": 7, "warmup_days": 7},
    }
    path = out / "project.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def make_project(name: str, out: Path):
    if name == "fraud":
        from offline.data.adapters import fraud_project
        from offline.datasets.fraud import TINY

        path = fraud_project(out, TINY)
    elif name == "bank":
        from offline.datasets.synthetic_bank import TINY_BANK, write_bank_project

        path = write_bank_project(out, TINY_BANK)
    else:
        path = shop_project(out)
    project = load_project(path)
    return path, project, load_tables(project)
