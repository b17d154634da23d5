"""Evaluation harness shared by the deep model (stage 1) and the distilled model (stage 2).

* :func:`time_split` — the published protocol: a training period, a label feedback delay
  (default 7 days) and a test period (default 7 days); cards already known to be compromised
  when a test day starts are removed from that day.
* :func:`fraud_metrics` — AUC ROC, average precision and card precision@k (per day, the share
  of compromised cards among the k cards with the highest score, a card's score being its max
  over the day's transactions; averaged over the test days).
* :func:`plot_roc_pr` — ROC and PR curves of several scorers to one PNG.
* :func:`engineered_features` / :func:`lightgbm_baseline` — the engineered-feature baseline
  (amount, weekend/night flags, customer count and mean amount over 1/7/30 days, terminal count
  and fraud rate over 1/7/30 days shifted back by the delay) trained on the same split.

All inputs are the normalised ``transactions`` table (int64 ns ``tx_datetime``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from offline.datasets.base import NS_PER_DAY, NS_PER_SECOND

PUBLISHED_TRAIN_START = "2018-07-25"  # the protocol's dates on the published 2018-04-01 data


@dataclass(frozen=True)
class SplitConfig:
    """Periods in whole days counted from day 0 (midnight UTC of the first transaction)."""

    train_start_day: int = 115  # 2018-07-25 on data starting 2018-04-01
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    @property
    def train_end_day(self) -> int:
        return self.train_start_day + self.train_days

    @property
    def test_start_day(self) -> int:
        return self.train_end_day + self.delay_days

    @property
    def test_end_day(self) -> int:
        return self.test_start_day + self.test_days

    def to_dict(self) -> dict:
        return asdict(self)

    def fitted(self, n_days: int, tail_days: int = 7) -> "SplitConfig":
        """This split, moved earlier if the data is too short for it (keeping ``tail_days``
        after the test period for forward-looking base-task labels)."""
        latest_start = n_days - tail_days - self.test_days - self.delay_days - self.train_days
        if self.train_start_day <= latest_start:
            return self
        if latest_start < 1:
            raise ValueError(f"split: {n_days} days of data cannot hold train {self.train_days} + delay "
                             f"{self.delay_days} + test {self.test_days} + {tail_days} days")
        return SplitConfig(latest_start, self.train_days, self.delay_days, self.test_days)


@dataclass
class Split:
    config: SplitConfig
    day0_ns: int
    train: pd.DataFrame
    test: pd.DataFrame
    removed_known_compromised: int

    def ns(self, day: int) -> int:
        return self.day0_ns + day * NS_PER_DAY

    @property
    def train_end_ns(self) -> int:
        return self.ns(self.config.train_end_day)

    @property
    def test_start_ns(self) -> int:
        return self.ns(self.config.test_start_day)

    @property
    def label_delay_ns(self) -> int:
        return self.config.delay_days * NS_PER_DAY


# The simulator's column names: the defaults of the fraud protocol's helpers below; a project's
# scoring plan passes its own (time column, serving label, first embedding key).
TIME, LABEL, ENTITY = "tx_datetime", "tx_fraud", "customer_id"


def data_day0_ns(tx: pd.DataFrame, time: str = TIME) -> int:
    t0 = int(tx[time].min())
    return t0 - t0 % NS_PER_DAY


def tx_day(tx: pd.DataFrame, day0_ns: int, time: str = TIME) -> np.ndarray:
    return (tx[time].to_numpy(np.int64) - day0_ns) // NS_PER_DAY


def time_split(tx: pd.DataFrame, cfg: SplitConfig = SplitConfig(), day0_ns: int | None = None, *,
               time: str = TIME, label: str = LABEL, entity: str = ENTITY) -> Split:
    """Train = [train_start, train_end); test = [test_start, test_end), test_start = train_end +
    delay. A test day d drops the entities with a positive label known before ``d - delay`` (known
    compromised: their labels have arrived) counted from the train start, as in the protocol."""
    day0 = data_day0_ns(tx, time) if day0_ns is None else day0_ns
    day = tx_day(tx, day0, time)
    train = tx.loc[(day >= cfg.train_start_day) & (day < cfg.train_end_day)].copy()
    fraud = tx[label].to_numpy() == 1
    parts, removed = [], 0
    for d in range(cfg.test_start_day, cfg.test_end_day):
        known = np.unique(tx.loc[fraud & (day >= cfg.train_start_day) & (day < d - cfg.delay_days), entity])
        today = tx.loc[day == d]
        keep = ~today[entity].isin(known)
        removed += int((~keep).sum())
        parts.append(today.loc[keep])
    test = pd.concat(parts) if parts else tx.iloc[:0]
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"split: empty {'train' if len(train) == 0 else 'test'} period for {cfg} "
                         f"(data has days 0..{int(day.max())})")
    return Split(cfg, day0, train, test.copy(), removed)


# ----- metrics -----------------------------------------------------------------------------

def card_precision_at_k(y_true, y_score, customer_id, tx_time_days, k: int = 100) -> float:
    """Mean over days of: among the k customers with the highest max-score that day, the share
    that had at least one fraud that day. Days with fewer than k customers still divide by k
    (as in the protocol)."""
    df = pd.DataFrame({"y": np.asarray(y_true), "s": np.asarray(y_score, np.float64),
                       "c": np.asarray(customer_id), "d": np.asarray(tx_time_days)})
    per_card = df.groupby(["d", "c"], sort=False).agg(y=("y", "max"), s=("s", "max")).reset_index()
    precisions = []
    for _, day in per_card.groupby("d", sort=True):
        top = day.sort_values(["s", "c"], ascending=[False, True], kind="stable").head(k)
        precisions.append(top["y"].sum() / k)
    return float(np.mean(precisions)) if precisions else float("nan")


def fraud_metrics(y_true, y_score, customer_id, tx_time_days, k: int = 100) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, np.float64)
    both = len(np.unique(y_true)) == 2
    return {
        "auc_roc": float(roc_auc_score(y_true, y_score)) if both else float("nan"),
        "average_precision": float(average_precision_score(y_true, y_score)) if both else float("nan"),
        f"card_precision@{k}": card_precision_at_k(y_true, y_score, customer_id, tx_time_days, k),
        "n": int(len(y_true)),
        "n_fraud": int(y_true.sum()),
    }


def plot_roc_pr(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> None:
    """ROC and precision-recall curves, one line per scorer: ``{name: (y_true, y_score)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, (y, s) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax1.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
        prec, rec, _ = precision_recall_curve(y, s)
        ax2.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, s):.3f})")
    ax1.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax2.set(xlabel="recall", ylabel="precision", title="precision-recall")
    for ax in (ax1, ax2):
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: str | Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----- engineered features + LightGBM baseline ---------------------------------------------

WINDOWS_DAYS = (1, 7, 30)
FEATURES = (
    ["tx_amount", "tx_during_weekend", "tx_during_night"]
    + [f"customer_nb_tx_{w}d" for w in WINDOWS_DAYS]
    + [f"customer_avg_amount_{w}d" for w in WINDOWS_DAYS]
    + [f"terminal_nb_tx_{w}d" for w in WINDOWS_DAYS]
    + [f"terminal_risk_{w}d" for w in WINDOWS_DAYS]
)


def _windowed(entity: np.ndarray, time_ns: np.ndarray, values: dict[str, np.ndarray], upper_ns: np.ndarray,
              window_ns: int) -> dict[str, np.ndarray]:
    """Per row: count and sums of ``values`` over the same entity's rows with
    ``upper - window < time <= upper`` (vectorised: composite (entity, time-rank) key)."""
    times = np.unique(time_ns)
    r = len(times) + 1
    ent_u, ent = np.unique(entity, return_inverse=True)
    key = ent.astype(np.int64) * r + np.searchsorted(times, time_ns)
    order = np.argsort(key, kind="stable")
    key = key[order]

    def pos_le(x):  # rows of the entity with time <= x come before this position
        return np.searchsorted(key, ent.astype(np.int64) * r + np.searchsorted(times, x, side="right"))

    hi, lo = pos_le(upper_ns), pos_le(upper_ns - window_ns)
    out = {"count": (hi - lo).astype(np.float64)}
    for name, v in values.items():
        cs = np.concatenate([[0.0], np.cumsum(v[order], dtype=np.float64)])
        out[name] = cs[hi] - cs[lo]
    return out


def engineered_features(tx: pd.DataFrame, delay_days: int = 7) -> pd.DataFrame:
    """The published engineered features for every transaction of ``tx`` (compute on the whole
    table, then split: windows look back across the split boundary as in the protocol).
    Terminal fraud rates only use labels of transactions at least ``delay_days`` old."""
    t = tx["tx_datetime"].to_numpy(np.int64)
    secs = (t // NS_PER_SECOND) % 86_400
    weekday = ((t // NS_PER_DAY) + 3) % 7  # 1970-01-01 was a Thursday
    out = pd.DataFrame(index=tx.index)
    out["tx_amount"] = tx["tx_amount"].to_numpy(np.float64)
    out["tx_during_weekend"] = (weekday >= 5).astype(np.int8)
    out["tx_during_night"] = (secs <= 6 * 3600).astype(np.int8)
    cust = tx["customer_id"].to_numpy(np.int64)
    term = tx["terminal_id"].to_numpy(np.int64)
    amount = out["tx_amount"].to_numpy()
    fraud = tx["tx_fraud"].to_numpy(np.float64)
    delay = delay_days * NS_PER_DAY
    for w in WINDOWS_DAYS:
        c = _windowed(cust, t, {"amount": amount}, t, w * NS_PER_DAY)
        out[f"customer_nb_tx_{w}d"] = c["count"]
        out[f"customer_avg_amount_{w}d"] = np.where(c["count"] > 0, c["amount"] / np.maximum(c["count"], 1), 0.0)
    for w in WINDOWS_DAYS:
        d = _windowed(term, t, {"fraud": fraud}, t - delay, w * NS_PER_DAY)  # (t-delay-w, t-delay]
        out[f"terminal_nb_tx_{w}d"] = d["count"]
        out[f"terminal_risk_{w}d"] = np.where(d["count"] > 0, d["fraud"] / np.maximum(d["count"], 1), 0.0)
    return out


def lightgbm_baseline(split: Split, features: pd.DataFrame, seed: int = 0, extra: dict | None = None,
                      name: str = "lightgbm") -> dict:
    """Fit LightGBM on the train period, score the test period. ``features`` is indexed like
    the transactions; ``extra`` maps name -> extra feature frame (same index), e.g. embeddings."""
    import lightgbm as lgb

    cols = list(features.columns)
    feats = features
    if extra:
        feats = pd.concat([features] + list(extra.values()), axis=1)
        cols = list(feats.columns)
    xtr, ytr = feats.loc[split.train.index, cols], split.train["tx_fraud"].to_numpy()
    xte, yte = feats.loc[split.test.index, cols], split.test["tx_fraud"].to_numpy()
    model = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, subsample=0.8,
                               subsample_freq=1, colsample_bytree=0.8, random_state=seed,
                               deterministic=True, n_jobs=2, verbose=-1)
    model.fit(xtr, ytr)
    score = model.predict_proba(xte)[:, 1]
    metrics = fraud_metrics(yte, score, split.test["customer_id"].to_numpy(),
                            tx_day(split.test, split.day0_ns))
    metrics["features"] = cols
    return {"name": name, "metrics": metrics, "y_true": yte, "y_score": score}


def embedding_features(tx: pd.DataFrame, embeddings_path: str | Path, plan=None) -> pd.DataFrame:
    """Per transaction, the customer's and terminal's deep embeddings looked up point-in-time
    with the plan's rule (``offline.embeddings.EmbeddingTable``) plus a missing flag each."""
    from offline.embeddings import EmbeddingTable
    from schemas.plan import builtin_plan

    plan = plan or builtin_plan("fraud")
    table = EmbeddingTable.from_parquet(embeddings_path, plan)
    anchor = tx["tx_datetime"].to_numpy(np.int64)
    cols = {}
    for key, etype in zip(plan.embedding_keys, plan.embedding_entity_types):
        vec, missing = table.lookup(etype, tx[key.column].to_numpy(np.int64), anchor)
        for j in range(vec.shape[1]):
            cols[f"{etype}_emb_{j}"] = vec[:, j]
        cols[f"{etype}_emb_missing"] = missing.astype(np.int8)
    return pd.DataFrame(cols, index=tx.index)


def evaluate_fraud(tx: pd.DataFrame, cfg: SplitConfig, out_dir: str | Path, embeddings: str | Path | None = None,
                   seed: int = 0, log=print) -> dict:
    """Split, engineered features, LightGBM (and LightGBM + deep embeddings when given), JSON
    report and ROC/PR plot in ``out_dir``. Returns the report."""
    import time

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    split = time_split(tx, cfg)
    log(f"evaluate: train {len(split.train)} tx ({int(split.train.tx_fraud.sum())} fraud), test {len(split.test)} tx "
        f"({int(split.test.tx_fraud.sum())} fraud), {split.removed_known_compromised} tx of known-compromised cards removed")
    feats = engineered_features(tx, cfg.delay_days)
    t_feat = time.perf_counter() - t0
    log(f"evaluate: engineered features in {t_feat:.1f}s")
    runs = [lightgbm_baseline(split, feats, seed=seed)]
    if embeddings is not None:
        emb = embedding_features(tx, embeddings)
        runs.append(lightgbm_baseline(split, feats, seed=seed, extra={"deep": emb}, name="lightgbm+deep_embeddings"))
    for r in runs:
        m = r["metrics"]
        log(f"evaluate: {r['name']}: AUC {m['auc_roc']:.4f}  AP {m['average_precision']:.4f}  "
            f"CP@100 {m['card_precision@100']:.4f}")
    plot_roc_pr({r["name"]: (r["y_true"], r["y_score"]) for r in runs}, out_dir / "roc_pr.png",
                title=f"test days {cfg.test_start_day}..{cfg.test_end_day - 1}")
    report = {
        "split": cfg.to_dict(),
        "day0_ns": split.day0_ns,
        "train_transactions": len(split.train), "train_fraud": int(split.train.tx_fraud.sum()),
        "test_transactions": len(split.test), "test_fraud": int(split.test.tx_fraud.sum()),
        "removed_known_compromised": split.removed_known_compromised,
        "models": {r["name"]: {k: v for k, v in r["metrics"].items()} for r in runs},
        "seconds": time.perf_counter() - t0,
        "plot": str(out_dir / "roc_pr.png"),
    }
    write_json(out_dir / "report.json", report)
    return report
