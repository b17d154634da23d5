"""Engineered features of a project's fact table, from its spec: the LightGBM baseline's inputs.

Per fact row (the published fraud features, generalised; on the fraud project they are exactly
the published ones plus a few more):

* the row's own numeric and boolean feature columns; hour of day, weekend and night (before
  6:00 UTC) of its time column;
* per foreign key of the table: the referenced entity's count of rows and mean of each numeric
  column over (t - w, t], the row itself included (w = 1, 7, 30 days);
* per label with a feedback delay and foreign key: the entity's count of rows and label rate over
  (t - delay - w, t - delay] -- only labels that had arrived at t.

Computed on the whole table at once (windows look back across the split boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from offline.data.spec import ColumnType, Project
from offline.datasets.base import NS_PER_DAY, NS_PER_SECOND

WINDOWS_DAYS = (1, 7, 30)


@dataclass(frozen=True)
class FactColumns:
    """What the features read from one fact table."""

    time: str
    own: tuple[str, ...]  # numeric/boolean feature columns, used as they are
    numeric: tuple[str, ...]  # numeric columns averaged per entity
    entities: tuple[str, ...]  # foreign key columns
    labels: tuple[tuple[str, int], ...]  # (label column, feedback delay ns), delay > 0

    @classmethod
    def of(cls, project: Project, table: str) -> "FactColumns":
        t = project.spec.tables[table]
        if t.time_column is None:
            raise ValueError(f"tables.{table}.time_column: engineered features need a timed fact table")
        feats = project.feature_columns(table)
        kinds = {c: t.columns[c] for c in feats}
        return cls(t.time_column,
                   tuple(c for c in feats if kinds[c] in (ColumnType.numeric, ColumnType.boolean)),
                   tuple(c for c in feats if kinds[c] == ColumnType.numeric),
                   tuple(project.foreign_keys(table)),
                   tuple((c, d.ns) for c, d in t.labels.items() if d.ns > 0))


def _floats(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s.astype("Float64"), errors="raise").to_numpy(np.float64, na_value=np.nan)


def windowed(entity: np.ndarray, time_ns: np.ndarray, values: dict[str, np.ndarray], upper_ns: np.ndarray,
             window_ns: int) -> dict[str, np.ndarray]:
    """Per row: count and sums of ``values`` over the same entity's rows with
    ``upper - window < time <= upper`` (vectorised: composite (entity, time-rank) key)."""
    times = np.unique(time_ns)
    r = len(times) + 1
    _, ent = np.unique(entity, return_inverse=True)
    key = ent.astype(np.int64) * r + np.searchsorted(times, time_ns)
    order = np.argsort(key, kind="stable")
    key = key[order]

    def pos_le(x):  # rows of the entity with time <= x come before this position
        return np.searchsorted(key, ent.astype(np.int64) * r + np.searchsorted(times, x, side="right"))

    hi, lo = pos_le(upper_ns), pos_le(upper_ns - window_ns)
    out = {"count": (hi - lo).astype(np.float64)}
    for name, v in values.items():
        cs = np.concatenate([[0.0], np.cumsum(np.nan_to_num(v[order]), dtype=np.float64)])
        out[name] = cs[hi] - cs[lo]
    return out


def _ratio(num: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.where(count > 0, num / np.maximum(count, 1), 0.0)


def engineered_features(df: pd.DataFrame, cols: FactColumns, windows: tuple[int, ...] = WINDOWS_DAYS) -> pd.DataFrame:
    """The features of every row of ``df`` (indexed like it)."""
    t = df[cols.time].to_numpy(np.int64)
    secs = (t // NS_PER_SECOND) % 86_400
    weekday = ((t // NS_PER_DAY) + 3) % 7  # 1970-01-01 was a Thursday
    out = {c: _floats(df[c]) for c in cols.own}
    out[f"{cols.time}_hour"] = secs / 3600.0
    out[f"{cols.time}_weekend"] = (weekday >= 5).astype(np.float64)
    out[f"{cols.time}_night"] = (secs <= 6 * 3600).astype(np.float64)
    numeric = {c: _floats(df[c]) for c in cols.numeric}
    labels = {c: df[c].astype("Float64").fillna(0).to_numpy(np.float64) for c, _ in cols.labels}
    for fk in cols.entities:
        ent = df[fk].to_numpy(np.int64)
        for w in windows:
            agg = windowed(ent, t, numeric, t, w * NS_PER_DAY)
            out[f"{fk}_count_{w}d"] = agg["count"]
            for c in cols.numeric:
                out[f"{fk}_mean_{c}_{w}d"] = _ratio(agg[c], agg["count"])
        for label, delay in cols.labels:
            for w in windows:
                agg = windowed(ent, t, {label: labels[label]}, t - delay, w * NS_PER_DAY)
                out[f"{fk}_{label}_count_{w}d"] = agg["count"]
                out[f"{fk}_{label}_rate_{w}d"] = _ratio(agg[label], agg["count"])
    return pd.DataFrame(out, index=df.index)


def lightgbm_scores(x_train: pd.DataFrame, y_train: np.ndarray, x_test: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """LightGBM (the published baseline's settings) fitted on the train rows; test scores."""
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, subsample=0.8,
                               subsample_freq=1, colsample_bytree=0.8, random_state=seed,
                               deterministic=True, n_jobs=2, verbose=-1)
    model.fit(x_train, y_train)
    return model.predict_proba(x_test)[:, 1]
