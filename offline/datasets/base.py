"""The small dataset interface shared by every offline dataset.

A :class:`RelationalDataset` is pure metadata (:class:`TableMeta`: primary key, foreign keys,
time column, offline-only label columns) plus one pandas frame per table. Time columns hold
int64 nanoseconds since the Unix epoch (UTC) — the representation used wherever time crosses a
module boundary in relstream.

Leakage protection lives in the data API (RelBench style): :meth:`RelationalDataset.upto`
returns the dataset as it was known at an instant — rows at or after it removed, and label
values of rows newer than ``ts - label_delay`` masked (pandas ``NA``), because fraud labels
only arrive after a feedback delay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND


@dataclass(frozen=True)
class TableMeta:
    """Metadata of one table (no data)."""

    name: str
    primary_key: str | None = None
    time_column: str | None = None
    foreign_keys: Mapping[str, str] = field(default_factory=dict)  # column -> referenced table
    label_columns: tuple[str, ...] = ()  # offline-only; subject to the label feedback delay
    # Per-label feedback delay; a label without one uses the ``label_delay_ns`` given to upto().
    label_delays_ns: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RelationalDataset:
    """Tables by name, their metadata, and (optionally) the instant they were cut at."""

    name: str
    meta: Mapping[str, TableMeta]
    frames: Mapping[str, pd.DataFrame]
    cut_time_ns: int | None = None
    label_cut_time_ns: int | None = None

    def __post_init__(self) -> None:
        if set(self.meta) != set(self.frames):
            raise ValueError(f"dataset {self.name}: metadata tables {sorted(self.meta)} "
                             f"!= frames {sorted(self.frames)}")
        for m in self.meta.values():
            for col, ref in m.foreign_keys.items():
                if ref not in self.meta:
                    raise ValueError(f"{m.name}.{col}: foreign key to unknown table {ref!r}")

    def table(self, name: str) -> pd.DataFrame:
        if name not in self.frames:
            raise KeyError(f"dataset {self.name} has no table {name!r}; tables: {sorted(self.frames)}")
        return self.frames[name]

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(self.meta)

    def time_range_ns(self, table: str) -> tuple[int, int]:
        col = self.meta[table].time_column
        if col is None:
            raise ValueError(f"table {table!r} has no time column")
        t = self.frames[table][col]
        return int(t.min()), int(t.max())

    def upto(self, ts_ns: int, label_delay_ns: int | None = None) -> "RelationalDataset":
        """The dataset as known at ``ts_ns``: rows with time >= ts removed; labels of rows with
        time >= ``ts - delay`` set to ``NA`` (nullable dtype), so they cannot be used by
        accident (any numeric conversion of NA fails loudly). ``delay`` is the label's own
        (``TableMeta.label_delays_ns``) unless ``label_delay_ns`` is given."""
        frames = {}
        cuts = []
        for name, m in self.meta.items():
            df = self.frames[name]
            if m.time_column is None:
                frames[name] = df
                continue
            t = df[m.time_column].to_numpy()
            view = df.loc[t < ts_ns].copy()
            for col in m.label_columns:
                delay = label_delay_ns if label_delay_ns is not None else m.label_delays_ns.get(col, 0)
                cuts.append(int(ts_ns) - int(delay))
                hidden = view[m.time_column].to_numpy() >= cuts[-1]
                masked = view[col].astype(_nullable(view[col].dtype))
                masked[hidden] = pd.NA
                view[col] = masked
            frames[name] = view
        label_cut = min(cuts) if cuts else int(ts_ns) - int(label_delay_ns or 0)
        return RelationalDataset(self.name, self.meta, frames, int(ts_ns), label_cut)

    def label_known(self, table: str, column: str, row_time_ns, at_ns, label_delay_ns: int | None = None):
        """Whether the label of rows at ``row_time_ns`` is known at instants ``at_ns`` — the same
        rule as :meth:`upto`, vectorised for samplers that featurise many seed times at once."""
        m = self.meta[table]
        delay = label_delay_ns if label_delay_ns is not None else m.label_delays_ns.get(column, 0)
        return np.asarray(row_time_ns, np.int64) < np.asarray(at_ns, np.int64) - int(delay)


def _nullable(dtype) -> str:
    kind = pd.api.types.pandas_dtype(dtype)
    if pd.api.types.is_integer_dtype(kind):
        return {1: "Int8", 2: "Int16", 4: "Int32", 8: "Int64"}[kind.itemsize]
    if pd.api.types.is_float_dtype(kind):
        return "Float64"
    return "object"
