"""Evaluation harness of scoring plans (distill and quality reports).

* :func:`time_split` — the fraud protocol's split, for any fact table: a training period, a
  label feedback delay and a test period; entities with a positive label known when a test day
  starts are removed from that day.
* :func:`scoring_metrics` — AUC ROC, average precision and entity precision@k as published
  (:func:`entity_precision_at_k`: per day, the share of positive entities among the k entities
  with the highest score, an entity's score being its max over the day's rows, entities detected
  on an earlier day left out; averaged over the test days; the protocol's card precision).
* :func:`entity_bootstrap` — paired bootstrap intervals resampling entities, not rows.
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

def _day_entity(y_true, y_score, entity, day) -> tuple[np.ndarray, ...]:
    """Per (day, entity): day, entity code (0..E-1), max label, max score; and E."""
    df = pd.DataFrame({"y": np.asarray(y_true), "s": np.asarray(y_score, np.float64),
                       "c": pd.factorize(pd.Series(np.asarray(entity)), sort=True)[0], "d": np.asarray(day)})
    g = df.groupby(["d", "c"], sort=True).agg(y=("y", "max"), s=("s", "max")).reset_index()
    n_entities = int(df["c"].max()) + 1 if len(df) else 0
    return (g["d"].to_numpy(), g["c"].to_numpy(np.int64), g["y"].to_numpy() > 0, g["s"].to_numpy(np.float64),
            n_entities)


def _precision_by_day(d, c, y, s, n_entities: int, k: int, remove_detected: bool) -> float:
    """Mean over days (ascending) of the share of positives among the day's top-k entities
    (score descending, entity code ascending on ties), divided by k; with ``remove_detected``
    an entity that was a positive in an earlier day's top k is out of later days' rankings."""
    detected = np.zeros(n_entities, bool)
    precisions = []
    bounds = np.flatnonzero(np.r_[True, d[1:] != d[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        cd, yd, sd = c[lo:hi], y[lo:hi], s[lo:hi]
        if remove_detected:
            keep = ~detected[cd]
            cd, yd, sd = cd[keep], yd[keep], sd[keep]
        top = np.lexsort((cd, -sd))[:k]
        hits = cd[top][yd[top]]
        precisions.append(len(hits) / k)
        detected[hits] = True
    return float(np.mean(precisions)) if precisions else float("nan")


def entity_precision_at_k(y_true, y_score, entity, day, k: int = 100, remove_detected: bool = True) -> float:
    """Card precision@k as published (the fraud-detection handbook's ``card_precision_top_k``):
    per day, entities ranked by their max score that day; the share of the top k with a positive
    row that day, divided by k even when the day has fewer entities; averaged over the days.
    Days are visited in order and an entity that was a positive in an earlier day's top k (already
    detected) is dropped from the later days' rankings. ``remove_detected=False`` keeps them: the
    lenient variant, higher when detected entities stay positive on later days."""
    d, c, y, s, n = _day_entity(y_true, y_score, entity, day)
    return _precision_by_day(d, c, y, s, n, k, remove_detected)


def scoring_metrics(y_true, y_score, entity, day, k: int = 100) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, np.float64)
    both = len(np.unique(y_true)) == 2
    d, c, y, s, n = _day_entity(y_true, y_score, entity, day)
    return {
        "auc_roc": float(roc_auc_score(y_true, y_score)) if both else float("nan"),
        "average_precision": float(average_precision_score(y_true, y_score)) if both else float("nan"),
        f"entity_precision@{k}": _precision_by_day(d, c, y, s, n, k, True),
        f"entity_precision_lenient@{k}": _precision_by_day(d, c, y, s, n, k, False),
        "n": int(len(y_true)),
        "n_positive": int(y_true.sum()),
    }


def _ranking(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows by descending score, and where each group of tied scores ends (in that order)."""
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    ranked = np.asarray(score, np.float64)[order]
    return order, np.r_[ranked[1:] != ranked[:-1], True]


def weighted_auc_ap(y: np.ndarray, weight: np.ndarray, order: np.ndarray, group_end: np.ndarray) -> tuple[float, float]:
    """AUC ROC and average precision with row weights, from a precomputed :func:`_ranking` (one
    sort per scorer instead of one per bootstrap resample); equal to scikit-learn's with
    ``sample_weight``."""
    yo, wo = np.asarray(y, np.float64)[order], np.asarray(weight, np.float64)[order]
    tp = np.cumsum(wo * yo)[group_end]
    fp = np.cumsum(wo * (1 - yo))[group_end]
    tpr, fpr = np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    seen = tp + fp
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    return auc, float(np.sum(np.diff(tpr) * precision))


def entity_bootstrap(y_true, scores: dict[str, np.ndarray], entity, day, pairs: list[tuple[str, str]],
                     n: int = 500, seed: int = 0, k: int = 100) -> dict:
    """95 % percentile intervals of each scorer's AUC, AP and entity precision@k and of the
    differences ``a - b`` for ``pairs``, from one paired bootstrap over *entities*: each resample
    draws entities with replacement and keeps all rows of each drawn entity (an entity's rows are
    correlated), every scorer on the same resample. A twice-drawn entity counts as two entities."""
    y = np.asarray(y_true)
    ranked = {name: _ranking(sc) for name, sc in scores.items()}
    codes = pd.factorize(pd.Series(np.asarray(entity)), sort=True)[0]
    n_ent = int(codes.max()) + 1
    per = {name: _day_entity(y, sc, codes, day) for name, sc in scores.items()}
    d, c = next(iter(per.values()))[:2]  # the same (day, entity) grid for every scorer
    order = np.argsort(c, kind="stable")  # (day, entity) records grouped by entity
    starts = np.searchsorted(c[order], np.arange(n_ent + 1))
    rng = np.random.default_rng(seed)
    names = ["auc_roc", "average_precision", f"entity_precision@{k}"]
    draws = {name: {m: [] for m in names} for name in scores}
    for _ in range(n):
        drawn = rng.integers(0, n_ent, n_ent)
        weight = np.bincount(drawn, minlength=n_ent)[codes]
        if len(np.unique(y[weight > 0])) < 2:
            continue
        # the drawn entities' (day, entity) records, each draw a new entity code
        lens = starts[drawn + 1] - starts[drawn]
        rec = order[np.repeat(starts[drawn], lens) + np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)]
        new_c = np.repeat(np.arange(n_ent), lens)
        by_day = np.lexsort((new_c, d[rec]))
        rec, new_c = rec[by_day], new_c[by_day]
        for name, sc in scores.items():
            _, _, ye, se, _ = per[name]
            auc, ap = weighted_auc_ap(y, weight, *ranked[name])
            draws[name]["auc_roc"].append(auc)
            draws[name]["average_precision"].append(ap)
            draws[name][names[2]].append(_precision_by_day(d[rec], new_c, ye[rec], se[rec], n_ent, k, True))
    arr = {name: {m: np.asarray(v) for m, v in ms.items()} for name, ms in draws.items()}

    def interval(v):
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else [float("nan")] * 2

    return {"unit": "entity", "entities": n_ent, "resamples": int(len(arr[next(iter(arr))]["auc_roc"])),
            "seed": seed,
            "ci95": {name: {m: interval(v) for m, v in ms.items()} for name, ms in arr.items()},
            "diff_ci95": {f"{a}-{b}": {m: interval(arr[a][m] - arr[b][m]) for m in names} for a, b in pairs}}


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
