"""Column encoders chosen from the spec's column types.

Fitting happens on rows the model may see at training time (before the training cut), so no
statistic (mean, std, category vocabulary) is computed from the future:

* ``numeric``  -> standardised value (train mean/std) + a missing flag;
* ``boolean``  -> 0/1;
* ``categorical`` -> index into the training vocabulary (0 = unseen or missing) -> embedding;
* ``timestamp`` (other than the table's time column) -> signed log of its age in days relative
  to each seed time (computed by the sampler, so the same row reads differently at each t);
* ``id`` -> not an input (keys become edges).

:class:`TableEncoding` is the numpy half (fit + transform a whole table once);
:class:`ColumnEncoder` the torch half (one per node type: linear over the numeric block plus the
sum of the categorical embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from offline.data.spec import ColumnType


@dataclass
class TableEncoding:
    numeric: list[str] = field(default_factory=list)
    boolean: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    timestamps: list[str] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    vocab: dict[str, dict] = field(default_factory=dict)  # column -> {value: index >= 1}

    @classmethod
    def fit(cls, df: pd.DataFrame, features: dict[str, ColumnType], train_rows: np.ndarray) -> "TableEncoding":
        enc = cls()
        train = df.iloc[train_rows] if len(train_rows) else df.iloc[:0]
        for col, ctype in features.items():
            if ctype == ColumnType.numeric:
                v = train[col].to_numpy(np.float64)
                v = v[np.isfinite(v)]
                enc.numeric.append(col)
                enc.mean[col] = float(v.mean()) if len(v) else 0.0
                enc.std[col] = float(v.std()) if len(v) > 1 and v.std() > 0 else 1.0
            elif ctype == ColumnType.boolean:
                enc.boolean.append(col)
            elif ctype == ColumnType.categorical:
                values = pd.unique(train[col].dropna())
                enc.categorical.append(col)
                enc.vocab[col] = {v: i + 1 for i, v in enumerate(sorted(values, key=str))}
            elif ctype == ColumnType.timestamp:
                enc.timestamps.append(col)
        return enc

    @property
    def numeric_width(self) -> int:
        return 2 * len(self.numeric) + len(self.boolean)

    @property
    def cardinalities(self) -> list[int]:
        return [len(self.vocab[c]) + 1 for c in self.categorical]

    def transform(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numeric block float32 [n, numeric_width], categorical codes int64 [n, c],
        timestamp columns int64 ns [n, t] (NaT -> the int64 minimum))."""
        n = len(df)
        cols = []
        for c in self.numeric:
            v = df[c].to_numpy(np.float64)
            ok = np.isfinite(v)
            cols.append(np.where(ok, (v - self.mean[c]) / self.std[c], 0.0))
            cols.append((~ok).astype(np.float64))
        for c in self.boolean:
            cols.append(df[c].to_numpy(np.float64))
        num = np.stack(cols, 1).astype(np.float32) if cols else np.zeros((n, 0), np.float32)
        cat = (np.stack([df[c].map(self.vocab[c]).fillna(0).to_numpy(np.int64) for c in self.categorical], 1)
               if self.categorical else np.zeros((n, 0), np.int64))
        ts = (np.stack([df[c].to_numpy(np.int64) for c in self.timestamps], 1)
              if self.timestamps else np.zeros((n, 0), np.int64))
        return num, cat, ts


class TimeEncoder(nn.Module):
    """cos(w * age_days + b), log-spaced initial periods 0.1 .. 100 days (TGN style)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(1, dim)
        with torch.no_grad():
            self.lin.weight.copy_((2 * torch.pi / torch.logspace(-1, 2, dim))[:, None])
            self.lin.bias.zero_()

    def forward(self, age_days: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.lin(age_days[:, None]))


class ColumnEncoder(nn.Module):
    """One node type's input: Linear(numeric block) + sum of categorical embeddings + a learned
    bias (tables without feature columns still get a type-specific start state)."""

    def __init__(self, numeric_width: int, cardinalities: list[int], hidden: int):
        super().__init__()
        self.numeric = nn.Sequential(nn.Linear(numeric_width, hidden), nn.ReLU(), nn.Linear(hidden, hidden)) \
            if numeric_width else None
        self.embeddings = nn.ModuleList([nn.Embedding(n, hidden) for n in cardinalities])
        self.bias = nn.Parameter(torch.zeros(hidden))

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        h = self.bias.expand(num.shape[0], -1)
        if self.numeric is not None:
            h = h + self.numeric(num)
        for i, emb in enumerate(self.embeddings):
            h = h + emb(cat[:, i])
        return h
