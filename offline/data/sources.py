"""Read a project's tables from their files and check them against the spec.

A table's ``source`` is a ``.parquet`` / ``.csv`` file or a directory of them (concatenated in
name order). Columns are cast by their declared type: ``timestamp`` -> int64 ns UTC (datetimes,
ISO strings, or integers taken as ns), ``id`` -> int64, ``numeric`` -> float64, ``boolean`` ->
int8 0/1, ``categorical`` kept as read. The result is a :class:`RelationalDataset` whose
``upto`` is the leakage rule every model and task goes through.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from offline.data.spec import (ColumnType, EntityAggregateTask, FactLabelTask, NextItemTask, Project,
                               SpecError)
from offline.datasets.base import NS_PER_DAY, RelationalDataset, TableMeta


def read_source(path: Path, columns: list[str], where: str) -> pd.DataFrame:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".csv"))
        if not files:
            raise SpecError(where, f"directory {path} holds no .parquet or .csv file")
    elif path.exists():
        files = [path]
    else:
        raise SpecError(where, f"file not found: {path}")
    frames = []
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            have = pq.read_schema(f).names
        elif f.suffix == ".csv":
            have = list(pd.read_csv(f, nrows=0).columns)
        else:
            raise SpecError(where, f"{f}: expected a .parquet or .csv file")
        missing = [c for c in columns if c not in have]
        if missing:
            col = missing[0]
            raise SpecError(f"{where.rsplit('.', 1)[0]}.columns.{col}",
                            f"unknown column {col!r}: not in {f} (columns there: {have})")
        frames.append(pd.read_parquet(f, columns=columns) if f.suffix == ".parquet"
                      else pd.read_csv(f, usecols=columns))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _cast(df: pd.DataFrame, col: str, ctype: ColumnType, where: str) -> pd.Series:
    s = df[col]
    try:
        if ctype == ColumnType.timestamp:
            if pd.api.types.is_integer_dtype(s):
                return s.astype(np.int64)
            ts = pd.to_datetime(s, utc=True, format="ISO8601") if s.dtype == object else pd.to_datetime(s, utc=True)
            if ts.isna().any():
                raise ValueError(f"unparseable or missing timestamp in row {int(np.flatnonzero(ts.isna())[0])}")
            return pd.Series(ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]").view(np.int64),
                             index=s.index)
        if ctype == ColumnType.id:
            if s.isna().any():
                raise ValueError(f"missing id in row {int(np.flatnonzero(s.isna())[0])}")
            return s.astype(np.int64)
        if ctype == ColumnType.numeric:
            return pd.to_numeric(s).astype(np.float64)
        if ctype == ColumnType.boolean:
            return s.astype(bool).astype(np.int8)
        return s
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}.columns.{col}", f"not {ctype.value}: {exc}") from None


def load_tables(project: Project) -> RelationalDataset:
    """Every table of the project, cast and checked (keys unique, foreign keys resolve)."""
    spec = project.spec
    frames, meta = {}, {}
    for name, t in spec.tables.items():
        where = f"tables.{name}"
        df = read_source(project.source_path(name), list(t.columns), f"{where}.source")
        df = pd.DataFrame({col: _cast(df, col, ctype, where) for col, ctype in t.columns.items()})
        if t.primary_key is not None and df[t.primary_key].duplicated().any():
            dup = df[t.primary_key][df[t.primary_key].duplicated()].iloc[0]
            raise SpecError(f"{where}.primary_key", f"duplicate value {dup!r} in {t.primary_key}")
        if t.time_column is not None:
            df = df.sort_values(t.time_column, kind="stable").reset_index(drop=True)
        frames[name] = df
        meta[name] = TableMeta(name=name, primary_key=t.primary_key, time_column=t.time_column,
                               foreign_keys=project.foreign_keys(name), label_columns=tuple(t.labels),
                               label_delays_ns={c: d.ns for c, d in t.labels.items()})
    for i, link in enumerate(spec.links):
        keys = frames[link.references][spec.tables[link.references].primary_key].to_numpy()
        vals = frames[link.table][link.column].to_numpy()
        bad = ~np.isin(vals, keys)
        if bad.any():
            raise SpecError(f"links[{i}]", f"{int(bad.sum())} rows of {link.table}.{link.column} reference no "
                                           f"{link.references} row (first: {vals[bad][0]!r})")
    ds = RelationalDataset(project.name, meta, frames)
    check_horizons(project, ds)
    return ds


def data_time_range_ns(project: Project, ds: RelationalDataset) -> tuple[int, int]:
    lo, hi = [], []
    for name, t in project.spec.tables.items():
        if t.time_column is not None and len(ds.table(name)):
            a, b = ds.time_range_ns(name)
            lo.append(a)
            hi.append(b)
    if not lo:
        raise SpecError("tables", "no table has a time column")
    return min(lo), max(hi)


def split_instants(project: Project, ds: RelationalDataset) -> dict:
    """day0 (midnight before the first row), test start and data end, in ns."""
    first, last = data_time_range_ns(project, ds)
    day0 = first - first % NS_PER_DAY
    split = project.spec.split
    if split.test_start is not None:
        test_start = int(pd.Timestamp(split.test_start, tz="UTC").value)
    else:
        end_midnight = last - last % NS_PER_DAY + NS_PER_DAY
        test_start = end_midnight - split.test_days * NS_PER_DAY
    return {"day0_ns": int(day0), "test_start_ns": int(test_start), "data_end_ns": int(last),
            "test_end_ns": int(test_start + split.test_days * NS_PER_DAY)}


def check_horizons(project: Project, ds: RelationalDataset) -> None:
    """A task is trainable only if one full horizon (plus the label delay) fits between the
    warm-up and the test start: otherwise no target could have been known at training time."""
    inst = split_instants(project, ds)
    if not inst["day0_ns"] < inst["test_start_ns"] <= inst["data_end_ns"]:
        raise SpecError("split.test_start", "the test period must start inside the data")
    first_snapshot = inst["day0_ns"] + project.spec.split.warmup_days * NS_PER_DAY
    for i, task in enumerate(project.tasks):
        if isinstance(task, FactLabelTask):
            continue
        assert isinstance(task, (EntityAggregateTask, NextItemTask))
        latest_end = inst["test_start_ns"] - project.task_label_delay_ns(task)
        # the warm-up shrinks on short data (down to one day), the horizon does not
        earliest = min(first_snapshot, inst["day0_ns"] + NS_PER_DAY)
        if earliest + task.horizon.ns > latest_end:
            days = (latest_end - inst["day0_ns"]) / NS_PER_DAY
            raise SpecError(f"base_tasks[{i}].horizon",
                            f"{task.horizon.value} {task.horizon.unit} is past the data: only {days:.1f} days "
                            "of labelled history before the test start (minus the label delay) -- "
                            "shorten the horizon or move split.test_start later")
