"""Datasets as adapters: each writes its tables as files plus a project spec (and serving plan)
into a directory, after which only the generic pipeline runs (``--project DIR/project.yaml``).

* ``fraud`` -- the card transaction simulator (:mod:`offline.datasets.fraud`);
* ``complete-journey`` -- the packaged grocery data (:mod:`offline.datasets.complete_journey`);
* ``bank`` -- the seeded six-table bank (:mod:`offline.datasets.synthetic_bank`);
* :func:`draft_spec` -- a directory of your own Parquet/CSV files -> a draft spec to edit.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from offline.datasets.base import NS_PER_DAY, RelationalDataset
from schemas.plan_loading import builtin_plan


def _write(ds: RelationalDataset, out: Path, columns: dict[str, list[str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, cols in columns.items():
        ds.table(name)[cols].to_parquet(out / f"{name}.parquet", index=False)


def _save(out: Path, spec: dict, plan_name: str) -> Path:
    (out / "plan.yaml").write_text(builtin_plan(plan_name).to_yaml())
    path = out / "project.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _iso(ns: int) -> str:
    return str(pd.Timestamp(int(ns), unit="ns").date())


def fraud_project(out_dir: str | Path, cfg=None, test_start: str | None = None, plan_name: str = "fraud") -> Path:
    """Simulated card transactions; base tasks: fraud at the customer / terminal within 7 days
    and the fraud label of each transaction (also the serving task). The test period defaults to the
    protocol's (``offline.evaluate.SplitConfig``, fitted to the data length). ``plan_name``: the
    built-in serving plan (``fraud_labels``: with label feedback; its label table is derived from
    the transactions' labels, so the project has no table of its own for it)."""
    from offline.datasets.fraud import FraudSimConfig, generate_dataset
    from offline.evaluate import SplitConfig

    cfg = cfg or FraudSimConfig()
    ds = generate_dataset(cfg)
    out = Path(out_dir)
    _write(ds, out, {"customers": ["customer_id"], "terminals": ["terminal_id"],
                     "transactions": ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount",
                                      "tx_fraud"]})
    if test_start is None:
        t0 = int(ds.table("transactions")["tx_datetime"].min())
        split = SplitConfig().fitted(cfg.n_days, 7)
        test_start = _iso(t0 - t0 % NS_PER_DAY + split.test_start_day * NS_PER_DAY)
    task = {"kind": "entity_aggregate", "facts": "transactions", "aggregate": "exists",
            "filter": {"tx_fraud": 1}, "horizon": "7 days"}
    spec = {
        "name": "fraud",
        "tables": {
            "customers": {"source": "customers.parquet", "primary_key": "customer_id", "columns": {"customer_id": "id"}},
            "terminals": {"source": "terminals.parquet", "primary_key": "terminal_id", "columns": {"terminal_id": "id"}},
            "transactions": {
                "source": "transactions.parquet", "primary_key": "transaction_id", "time_column": "tx_datetime",
                "columns": {"transaction_id": "id", "tx_datetime": "timestamp", "customer_id": "id",
                            "terminal_id": "id", "tx_amount": "numeric", "tx_fraud": "boolean"},
                "labels": {"tx_fraud": "7 days"}},
        },
        "links": [{"table": "transactions", "column": "customer_id", "references": "customers"},
                  {"table": "transactions", "column": "terminal_id", "references": "terminals"}],
        "base_tasks": [{"name": "customer_fraud_7d", "entity": "customers", **task},
                       {"name": "terminal_fraud_7d", "entity": "terminals", **task},
                       {"name": "tx_fraud", "kind": "fact_label", "table": "transactions", "label": "tx_fraud"}],
        "serving": {"plan": "plan.yaml",
                    "task": {"name": "tx_fraud", "kind": "fact_label", "table": "transactions", "label": "tx_fraud"}},
        "split": {"test_start": test_start, "test_days": 7, "warmup_days": 30},
    }
    return _save(out, spec, plan_name)


def complete_journey_project(out_dir: str | Path, max_rows: int | None = None, session_seed: int = 0,
                             test_weeks: int = 2) -> Path:
    """Complete Journey purchase lines; base task: which products a household buys in the next
    7 days (next item); the serving plan ranks candidate products per household."""
    from offline.datasets.complete_journey import load_complete_journey

    ds = load_complete_journey(max_rows=max_rows, session_seed=session_seed)
    out = Path(out_dir)
    tx_cols = ["transaction_id", "transaction_timestamp", "household_id", "product_id", "basket_id", "quantity",
               "sales_value"]
    hh_cols = [c for c in ("household_id", "income", "home_ownership", "household_size") if c in ds.table("households")]
    pr_cols = [c for c in ("product_id", "department", "brand", "product_category") if c in ds.table("products")]
    _write(ds, out, {"households": hh_cols, "products": pr_cols, "transactions": tx_cols})
    spec = {
        "name": "complete_journey",
        "tables": {
            "households": {"source": "households.parquet", "primary_key": "household_id",
                           "columns": {"household_id": "id", **{c: "categorical" for c in hh_cols[1:]}}},
            "products": {"source": "products.parquet", "primary_key": "product_id",
                         "columns": {"product_id": "id", **{c: "categorical" for c in pr_cols[1:]}}},
            "transactions": {
                "source": "transactions.parquet", "primary_key": "transaction_id",
                "time_column": "transaction_timestamp",
                "columns": {"transaction_id": "id", "transaction_timestamp": "timestamp", "household_id": "id",
                            "product_id": "id", "basket_id": "id", "quantity": "numeric", "sales_value": "numeric"}},
        },
        "links": [{"table": "transactions", "column": "household_id", "references": "households"},
                  {"table": "transactions", "column": "product_id", "references": "products"}],
        "base_tasks": [{"name": "next_products_7d", "kind": "next_item", "entity": "households",
                        "facts": "transactions", "item": "product_id", "horizon": "7 days", "session": "basket_id"}],
        "serving": {"plan": "plan.yaml",
                    "task": {"name": "next_products_7d", "kind": "next_item", "entity": "households",
                             "facts": "transactions", "item": "product_id", "horizon": "7 days", "session": "basket_id"}},
        "split": {"test_days": 7 * test_weeks, "warmup_days": 28},
    }
    return _save(out, spec, "recsys")


def draft_spec(directory: str | Path) -> dict:
    """A first spec for a directory of ``<table>.parquet|csv`` files: column types guessed from
    dtypes (``*_id`` integers -> id, datetimes -> timestamp, floats -> numeric, bools -> boolean,
    the rest categorical), the first unique ``*_id`` column as primary key, the first timestamp as
    time column, ``<x>_id`` columns of other tables linked to the table whose key is ``<x>_id``.
    Labels, tasks and the serving plan are left for you to write."""
    directory = Path(directory)
    tables = {}
    for f in sorted(p for p in directory.iterdir() if p.suffix in (".parquet", ".csv")):
        df = pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f)
        cols = {}
        for c in df.columns:
            s = df[c]
            if pd.api.types.is_datetime64_any_dtype(s):
                cols[c] = "timestamp"
            elif pd.api.types.is_bool_dtype(s):
                cols[c] = "boolean"
            elif pd.api.types.is_integer_dtype(s) and str(c).endswith("_id"):
                cols[c] = "id"
            elif pd.api.types.is_numeric_dtype(s):
                cols[c] = "numeric"
            else:
                cols[c] = "categorical"
        t = {"source": f.name, "columns": cols}
        pk = next((c for c, ty in cols.items() if ty == "id" and df[c].is_unique), None)
        if pk:
            t["primary_key"] = pk
        tcol = next((c for c, ty in cols.items() if ty == "timestamp"), None)
        if tcol:
            t["time_column"] = tcol
        tables[f.stem] = t
    keys = {t["primary_key"]: name for name, t in tables.items() if "primary_key" in t}
    links = [{"table": name, "column": c, "references": keys[c]}
             for name, t in tables.items() for c, ty in t["columns"].items()
             if ty == "id" and c in keys and keys[c] != name]
    return {"name": directory.name, "tables": tables, "links": links, "base_tasks": []}


__all__ = ["complete_journey_project", "draft_spec", "fraud_project"]
