"""Evaluation harness of scoring plans (distill and quality reports).

* :func:`time_split` — the fraud protocol's split, for any fact table: a training period, a
  label feedback delay and a test period; entities with a positive label known when a test day
  starts are removed from that day.
* :func:`scoring_metrics` — AUC ROC, average precision and entity precision@k (per day, the
  share of positive entities among the k entities with the highest score, an entity's score
  being its max over the day's rows; averaged over the test days; the protocol's card precision).
* :func:`plot_roc_pr` — ROC and PR curves of several scorers to one PNG.

Inputs are a fact table with an int64 ns time column; the callers pass the column names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from offline.datasets.base import NS_PER_DAY


@dataclass(frozen=True)
class SplitConfig:
    """Periods in whole days counted from day 0 (midnight UTC of the first row)."""

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


def data_day0_ns(facts: pd.DataFrame, time: str) -> int:
    t0 = int(facts[time].min())
    return t0 - t0 % NS_PER_DAY


def row_day(facts: pd.DataFrame, day0_ns: int, time: str) -> np.ndarray:
    return (facts[time].to_numpy(np.int64) - day0_ns) // NS_PER_DAY


def time_split(facts: pd.DataFrame, cfg: SplitConfig, day0_ns: int | None = None, *, time: str, label: str,
               entity: str) -> Split:
    """Train = [train_start, train_end); test = [test_start, test_end), test_start = train_end +
    delay. A test day d drops the entities with a positive label known before ``d - delay`` (known
    compromised: their labels have arrived) counted from the train start, as in the protocol."""
    day0 = data_day0_ns(facts, time) if day0_ns is None else day0_ns
    day = row_day(facts, day0, time)
    train = facts.loc[(day >= cfg.train_start_day) & (day < cfg.train_end_day)].copy()
    positive = facts[label].to_numpy() == 1
    parts, removed = [], 0
    for d in range(cfg.test_start_day, cfg.test_end_day):
        known = np.unique(facts.loc[positive & (day >= cfg.train_start_day) & (day < d - cfg.delay_days), entity])
        today = facts.loc[day == d]
        keep = ~today[entity].isin(known)
        removed += int((~keep).sum())
        parts.append(today.loc[keep])
    test = pd.concat(parts) if parts else facts.iloc[:0]
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"split: empty {'train' if len(train) == 0 else 'test'} period for {cfg} "
                         f"(data has days 0..{int(day.max())})")
    return Split(cfg, day0, train, test.copy(), removed)


# ----- metrics -----------------------------------------------------------------------------

def entity_precision_at_k(y_true, y_score, entity, day, k: int = 100) -> float:
    """Mean over days of: among the k entities with the highest max-score that day, the share
    that had at least one positive row that day (the fraud protocol's card precision@k). Days
    with fewer than k entities still divide by k (as in the protocol)."""
    df = pd.DataFrame({"y": np.asarray(y_true), "s": np.asarray(y_score, np.float64),
                       "c": np.asarray(entity), "d": np.asarray(day)})
    per_card = df.groupby(["d", "c"], sort=False).agg(y=("y", "max"), s=("s", "max")).reset_index()
    precisions = []
    for _, day in per_card.groupby("d", sort=True):
        top = day.sort_values(["s", "c"], ascending=[False, True], kind="stable").head(k)
        precisions.append(top["y"].sum() / k)
    return float(np.mean(precisions)) if precisions else float("nan")


def scoring_metrics(y_true, y_score, entity, day, k: int = 100) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, np.float64)
    both = len(np.unique(y_true)) == 2
    return {
        "auc_roc": float(roc_auc_score(y_true, y_score)) if both else float("nan"),
        "average_precision": float(average_precision_score(y_true, y_score)) if both else float("nan"),
        f"entity_precision@{k}": entity_precision_at_k(y_true, y_score, entity, day, k),
        "n": int(len(y_true)),
        "n_positive": int(y_true.sum()),
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
