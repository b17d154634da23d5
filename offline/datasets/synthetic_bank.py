"""A small seeded bank: six tables, two fact tables -- a schema neither built-in dataset has.

customers, accounts (-> customers), devices, merchants, card_payments (-> accounts, merchants,
devices; label ``is_fraud``, known after 7 days) and logins (-> customers, devices). Fraud comes
from compromised devices: from its compromise day on, a device logs in to several customers'
accounts and pays large amounts at risky merchants; plus a few stray large-amount frauds. So
the signal is relational (device -> other customers' logins and payments), which a model must
reach through the graph.

:func:`write_bank_project` writes the tables as Parquet, the serving plan and the project spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from offline.datasets.base import NS_PER_DAY


@dataclass(frozen=True)
class BankConfig:
    n_customers: int = 300
    n_devices: int = 400
    n_merchants: int = 80
    n_days: int = 60
    start_date: str = "2024-01-01"
    payments_per_account_day: float = 0.6
    logins_per_customer_day: float = 0.8
    compromised_devices_per_week: int = 2
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


TINY_BANK = BankConfig(n_customers=60, n_devices=80, n_merchants=20, n_days=28, compromised_devices_per_week=2)


def generate_bank(cfg: BankConfig = BankConfig()) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(cfg.seed)
    start = pd.Timestamp(cfg.start_date, tz="UTC").value
    customers = pd.DataFrame({
        "customer_id": np.arange(cfg.n_customers, dtype=np.int64) + 1000,
        "age": rng.integers(18, 90, cfg.n_customers).astype(np.float64),
        "segment": rng.choice(["retail", "premium", "student"], cfg.n_customers, p=[0.7, 0.2, 0.1]),
    })
    n_acc = int(cfg.n_customers * 1.5)
    accounts = pd.DataFrame({
        "account_id": np.arange(n_acc, dtype=np.int64) + 5000,
        "customer_id": rng.choice(customers["customer_id"].to_numpy(), n_acc),
        "account_type": rng.choice(["checking", "savings", "credit"], n_acc),
        "overdraft": rng.random(n_acc) < 0.3,
    })
    devices = pd.DataFrame({"device_id": np.arange(cfg.n_devices, dtype=np.int64) + 9000,
                            "os": rng.choice(["ios", "android", "web"], cfg.n_devices)})
    merchants = pd.DataFrame({"merchant_id": np.arange(cfg.n_merchants, dtype=np.int64) + 100,
                              "mcc": rng.choice(["grocery", "travel", "electronics", "gaming", "fuel"], cfg.n_merchants),
                              "risky": rng.random(cfg.n_merchants) < 0.2})
    # each customer uses one or two own devices
    own = rng.choice(devices["device_id"].to_numpy(), (cfg.n_customers, 2))
    cust_index = {c: i for i, c in enumerate(customers["customer_id"])}
    # compromised devices: (device, from-day)
    n_comp = max(1, cfg.compromised_devices_per_week * cfg.n_days // 7)
    comp_dev = rng.choice(devices["device_id"].to_numpy(), n_comp, replace=False)
    comp_day = rng.integers(3, cfg.n_days, n_comp)
    victims = {d: rng.choice(customers["customer_id"].to_numpy(), 4, replace=False) for d in comp_dev}

    # logins
    n_login = rng.poisson(cfg.logins_per_customer_day * cfg.n_days * cfg.n_customers)
    lc = rng.choice(customers["customer_id"].to_numpy(), n_login)
    ld = own[[cust_index[c] for c in lc], rng.integers(0, 2, n_login)]
    lt = start + rng.integers(0, cfg.n_days * NS_PER_DAY, n_login)
    extra_c, extra_d, extra_t = [], [], []
    for d, day in zip(comp_dev, comp_day):
        for v in victims[d]:
            k = rng.integers(1, 4)
            extra_c += [v] * k
            extra_d += [d] * k
            extra_t += list(start + day * NS_PER_DAY + rng.integers(0, (cfg.n_days - day) * NS_PER_DAY, k))
    logins = pd.DataFrame({"customer_id": np.concatenate([lc, extra_c]).astype(np.int64),
                           "device_id": np.concatenate([ld, extra_d]).astype(np.int64),
                           "login_time": np.concatenate([lt, extra_t]).astype(np.int64)})
    logins["success"] = rng.random(len(logins)) < 0.95
    logins = logins.sort_values("login_time", kind="stable").reset_index(drop=True)
    logins.insert(0, "login_id", np.arange(len(logins), dtype=np.int64) + 1)

    # payments: normal ones from own devices, fraud ones from compromised devices after their day
    acc_cust = accounts["customer_id"].to_numpy()
    n_pay = rng.poisson(cfg.payments_per_account_day * cfg.n_days * n_acc)
    pa = rng.integers(0, n_acc, n_pay)
    pd_ = own[[cust_index[c] for c in acc_cust[pa]], rng.integers(0, 2, n_pay)]
    pt = start + rng.integers(0, cfg.n_days * NS_PER_DAY, n_pay)
    pm = rng.choice(merchants["merchant_id"].to_numpy(), n_pay)
    amount = np.round(rng.lognormal(3.0, 0.8, n_pay), 2)
    fraud = (amount > 400) & (rng.random(n_pay) < 0.5)
    risky = merchants.loc[merchants["risky"], "merchant_id"].to_numpy()
    fa, fd, ft, fm, famt = [], [], [], [], []
    for d, day in zip(comp_dev, comp_day):
        for v in victims[d]:
            accs = np.flatnonzero(acc_cust == v)
            if not len(accs):
                continue
            k = rng.integers(2, 6)
            fa += list(rng.choice(accs, k))
            fd += [d] * k
            ft += list(start + day * NS_PER_DAY + rng.integers(0, (cfg.n_days - day) * NS_PER_DAY, k))
            fm += list(rng.choice(risky if len(risky) else merchants["merchant_id"].to_numpy(), k))
            famt += list(np.round(rng.lognormal(5.0, 0.5, k), 2))
    payments = pd.DataFrame({
        "account_id": accounts["account_id"].to_numpy()[np.concatenate([pa, fa]).astype(np.int64)],
        "merchant_id": np.concatenate([pm, fm]).astype(np.int64),
        "device_id": np.concatenate([pd_, fd]).astype(np.int64),
        "payment_time": np.concatenate([pt, ft]).astype(np.int64),
        "amount": np.concatenate([amount, famt]).astype(np.float64),
        "channel": rng.choice(["pos", "online"], n_pay + len(fa)),
        "is_fraud": np.concatenate([fraud, np.ones(len(fa), bool)]).astype(np.int64),
    })
    payments = payments.sort_values("payment_time", kind="stable").reset_index(drop=True)
    payments.insert(0, "payment_id", np.arange(len(payments), dtype=np.int64) + 1)
    for df, col in ((payments, "payment_time"), (logins, "login_time")):
        df[col] = pd.to_datetime(df[col], utc=True)
    return {"customers": customers, "accounts": accounts, "devices": devices, "merchants": merchants,
            "card_payments": payments, "logins": logins}


BANK_PLAN = {
    "name": "bank",
    "fact_table": "card_payments",
    "label": "is_fraud",
    "tables": {
        "accounts": {"primary_key": "account_id", "columns": {"account_id": "int64"}},
        "merchants": {"primary_key": "merchant_id", "columns": {"merchant_id": "int64"}},
        "devices": {"primary_key": "device_id", "columns": {"device_id": "int64"}},
        "card_payments": {
            "primary_key": "payment_id", "time_column": "payment_time",
            "columns": {"payment_id": "int64", "payment_time": "timestamp", "account_id": "int64",
                        "merchant_id": "int64", "device_id": "int64", "amount": "float32", "is_fraud": "int64"},
            "foreign_keys": {"account_id": "accounts", "merchant_id": "merchants", "device_id": "devices"},
        },
        "logins": {
            "primary_key": "login_id", "time_column": "login_time",
            "columns": {"login_id": "int64", "login_time": "timestamp", "customer_id": "int64", "device_id": "int64"},
            "foreign_keys": {"device_id": "devices"},
        },
    },
    "distillation": {
        "embedding_keys": ["card_payments.account_id", "card_payments.merchant_id"],
        "max_embedding_offset": {"value": 14, "unit": "days"},
        "min_embedding_offset": {"value": 12, "unit": "hours"},
        "real_time_offset": {"value": 7, "unit": "days"},
        "real_time_interactions": {
            "card_payments.account_id->accounts.account_id->card_payments.account_id": 16,
            "card_payments.device_id->devices.device_id->logins.device_id": 16,
        },
    },
}


def bank_project_spec(source_dir: str = ".", plan: str | dict = "plan.yaml") -> dict:
    def table(name, pk, columns, time=None, labels=None):
        t = {"source": f"{source_dir}/{name}.parquet", "primary_key": pk, "columns": columns}
        if time:
            t["time_column"] = time
        if labels:
            t["labels"] = labels
        return t

    return {
        "name": "bank",
        "tables": {
            "customers": table("customers", "customer_id",
                               {"customer_id": "id", "age": "numeric", "segment": "categorical"}),
            "accounts": table("accounts", "account_id", {"account_id": "id", "customer_id": "id",
                                                          "account_type": "categorical", "overdraft": "boolean"}),
            "devices": table("devices", "device_id", {"device_id": "id", "os": "categorical"}),
            "merchants": table("merchants", "merchant_id", {"merchant_id": "id", "mcc": "categorical",
                                                            "risky": "boolean"}),
            "card_payments": table("card_payments", "payment_id", {
                "payment_id": "id", "payment_time": "timestamp", "account_id": "id", "merchant_id": "id",
                "device_id": "id", "amount": "numeric", "channel": "categorical", "is_fraud": "boolean"},
                time="payment_time", labels={"is_fraud": "7 days"}),
            "logins": table("logins", "login_id", {"login_id": "id", "login_time": "timestamp", "customer_id": "id",
                                                   "device_id": "id", "success": "boolean"}, time="login_time"),
        },
        "links": [
            {"table": "accounts", "column": "customer_id", "references": "customers"},
            {"table": "card_payments", "column": "account_id", "references": "accounts"},
            {"table": "card_payments", "column": "merchant_id", "references": "merchants"},
            {"table": "card_payments", "column": "device_id", "references": "devices"},
            {"table": "logins", "column": "customer_id", "references": "customers"},
            {"table": "logins", "column": "device_id", "references": "devices"},
        ],
        "base_tasks": [
            {"name": "account_fraud_7d", "kind": "entity_aggregate", "entity": "accounts", "facts": "card_payments",
             "aggregate": "exists", "filter": {"is_fraud": 1}, "horizon": "7 days"},
            {"name": "payment_fraud", "kind": "fact_label", "table": "card_payments", "label": "is_fraud"},
        ],
        "serving": {"plan": plan,
                    "task": {"name": "payment_fraud", "kind": "fact_label", "table": "card_payments",
                             "label": "is_fraud"}},
        "split": {"test_days": 7, "warmup_days": 7},
    }


def write_bank_project(out_dir: str | Path, cfg: BankConfig = BankConfig()) -> Path:
    """Tables as Parquet + ``plan.yaml`` + ``project.yaml`` in ``out_dir``; returns the spec path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in generate_bank(cfg).items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    (out / "plan.yaml").write_text(yaml.safe_dump(BANK_PLAN, sort_keys=False))
    spec_path = out / "project.yaml"
    spec_path.write_text(yaml.safe_dump(bank_project_spec(), sort_keys=False))
    return spec_path
