"""Rows of interaction tables become window appends: one row (:func:`interactions_of`) or many
a column at a time (:func:`interactions_of_columns`); and the windows a fact row reads.

* :func:`interactions_of` turns one row of an interaction table into the window appends it
  causes (one per hop whose interaction table it belongs to). Live ingestion, backfill, offline
  replay and the scorer's optional self-append all call it.
* :func:`window_keys` names the windows a fact row needs (RTI hops, then label keys); a window
  store answers them as of the anchor time with :meth:`ServingPlan.window_bounds`.
* Label feedback: a label event is a row of the plan's label table; :func:`interactions_of` turns
  it into appends to the label windows, ordered by the time the label became known
  (:func:`with_known_time`: the event's known time, else the fact's time + ``delay``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from schemas.plan import DTYPES, Hop, ServingPlan
from schemas.values import RowError, coerce_row, coerce_value, event_id_int, to_ns


@dataclass(frozen=True)
class Interaction:
    """One interaction to append to a window: an event of a hop's interaction table."""

    event_id: int  # see :func:`event_id_int`
    event_time: int  # ns
    values: Mapping[str, Any]  # the hop's columns, plan-typed


@dataclass(frozen=True)
class Window:
    """The interactions of one entity along one hop, oldest first, as parallel column arrays."""

    event_time: np.ndarray  # int64 ns, ascending
    columns: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.event_time.shape[0])

    @classmethod
    def empty(cls, plan: ServingPlan, hop: Hop) -> "Window":
        table = plan.interaction_table(hop)
        return cls(np.zeros(0, np.int64),
                   {c: np.zeros(0, dtype=DTYPES[table.columns[c]][1]) for c in hop.columns})

    @classmethod
    def from_interactions(cls, plan: ServingPlan, hop: Hop, items: Sequence[Interaction]) -> "Window":
        table = plan.interaction_table(hop)
        times = np.fromiter((i.event_time for i in items), np.int64, len(items))
        cols = {}
        for c in hop.columns:
            np_dtype = DTYPES[table.columns[c]][1]
            if np_dtype == "object":
                arr = np.empty(len(items), dtype=object)
                arr[:] = [i.values[c] for i in items]
            else:
                arr = np.fromiter((i.values[c] for i in items), np_dtype, len(items))
            cols[c] = arr
        return cls(times, cols)


WindowKey = tuple[str, Any]  # (hop key, entity id)


def with_known_time(plan: ServingPlan, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A label row with its known time: as given, or (missing or null) the labelled fact's time
    plus the plan's ``label_feedback.delay`` -- the one place that default is applied."""
    fb = plan.label_feedback
    known_col = plan.tables[fb.table].time_column
    if row.get(known_col) is not None:
        return row
    fact_col = plan.fact.time_column
    if row.get(fact_col) is None:
        raise RowError(f"{fb.table}.{fact_col}", "missing field (a label without a known time is known at "
                                                 "this time + delay)")
    return {**row, known_col: to_ns(row[fact_col], f"{fb.table}.{fact_col}") + fb.delay.ns}


def interactions_of(plan: ServingPlan, table: str, row: Mapping[str, Any]) -> list[tuple[str, Any, Interaction]]:
    """The window appends caused by one row of ``table``: ``(hop_key, entity_id, interaction)``.

    Raises :class:`RowError` naming the field when the row lacks what a hop needs.
    """
    spec = plan.tables.get(table)
    if spec is None:
        raise RowError("table", f"unknown table {table!r}")
    hops = plan.hops_by_interaction_table.get(table)
    if not hops:
        return []
    if plan.label_feedback is not None and table == plan.label_feedback.table and isinstance(row, Mapping):
        row = with_known_time(plan, row)
    typed = coerce_row(plan, table, row, columns=plan.interaction_columns[table])  # once per row, not per hop
    if spec.primary_key:
        event_id = event_id_int(typed[spec.primary_key])
    else:
        event_id = event_id_int(repr(sorted(typed.items())))
    event_time = typed[spec.time_column]
    return [(hop.key.key, typed[hop.key.target.column],
             Interaction(event_id=event_id, event_time=event_time, values={c: typed[c] for c in hop.columns}))
            for hop in hops]


# ----- many rows at once ---------------------------------------------------------------------

class _Missing:
    """The value of a field a row does not have (a hole in a column)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


@dataclass(frozen=True)
class HopRows:
    """The window rows of one hop for many interactions, as parallel column arrays.

    Row ``j`` is the append ``(hop_key, entity[j], Interaction(event_id[j], event_time[j],
    {c: values[c][j]}))`` of batch row ``source[j]``. Integer and time columns are int64 arrays,
    float columns float64 (as :func:`coerce_value` gives them), string columns object arrays of bytes.
    """

    hop_key: str
    source: np.ndarray  # int64: the batch row each window row comes from
    entity: np.ndarray  # int64, or object (bytes) for string join keys
    event_time: np.ndarray  # int64 ns
    event_id: np.ndarray  # int64
    values: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def items(self) -> list[tuple[str, Any, Interaction]]:
        """The rows as ``interactions_of`` appends (Python values), in batch order."""
        cols = {c: a.tolist() for c, a in self.values.items()}
        ents, times, ids = self.entity.tolist(), self.event_time.tolist(), self.event_id.tolist()
        return [(self.hop_key, ents[j], Interaction(event_id=ids[j], event_time=times[j],
                                                    values={c: v[j] for c, v in cols.items()}))
                for j in range(len(ids))]


@dataclass(frozen=True)
class InteractionBatch:
    """What :func:`interactions_of_columns` makes of a batch of ``n`` rows.

    ``hops`` holds the rows that took the vectorised path (every hop, the same batch rows);
    ``fallback`` maps each other row to what :func:`interactions_of` gave it: its appends, or the
    error it raised (a :class:`RowError`, or another of :data:`ROW_CHECK_ERRORS`). Together they
    are exactly ``interactions_of`` of every row.
    """

    n: int
    hops: tuple[HopRows, ...]
    fallback: Mapping[int, "list[tuple[str, Any, Interaction]] | Exception"]

    @property
    def errors(self) -> dict[int, Exception]:
        """Batch row -> the error of each row :func:`interactions_of` refuses."""
        return {i: r for i, r in self.fallback.items() if not isinstance(r, list)}

    @property
    def window_rows(self) -> int:
        return sum(len(h) for h in self.hops) + sum(len(r) for r in self.fallback.values() if isinstance(r, list))

    def fallback_items(self) -> list[tuple[str, Any, Interaction]]:
        """The appends of the rows that took the reference path, in batch order."""
        return [a for i in sorted(self.fallback) if isinstance(self.fallback[i], list) for a in self.fallback[i]]

    def per_row(self) -> list["list[tuple[str, Any, Interaction]] | RowError"]:
        """Row by row, what :func:`interactions_of` gives (appends in hop order, or the error)."""
        out: list[Any] = [None] * self.n
        for i, r in self.fallback.items():
            out[i] = r
        if self.hops:
            for i in self.hops[0].source.tolist():
                out[i] = []
            for hop in self.hops:
                for i, item in zip(hop.source.tolist(), hop.items()):
                    out[i].append(item)
        return out


def _int_column(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, rows whose value is a plain integer in int64 range)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "i":
        return values.astype(np.int64, copy=False), np.ones(len(values), bool)
    values = list(values)
    if set(map(type, values)) == {int}:
        try:
            return np.array(values, dtype=np.int64), np.ones(len(values), bool)
        except OverflowError:
            pass
    ok = np.fromiter((type(v) is int and -(2**63) <= v < 2**63 for v in values), bool, len(values))
    return np.array([v if good else 0 for v, good in zip(values, ok)], dtype=np.int64), ok


def _float_column(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, rows whose value is a finite int or float)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fi":
        arr = values.astype(np.float64, copy=False)
        return arr, np.isfinite(arr)
    values = list(values)
    ok = np.ones(len(values), bool)
    if not set(map(type, values)) <= {float, int}:
        ok = np.fromiter((type(v) is float or type(v) is int for v in values), bool, len(values))
        values = [v if good else 0.0 for v, good in zip(values, ok)]
    try:
        arr = np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond the float range: the reference path refuses it
        ok &= np.fromiter((type(v) is float or abs(v) < 2**1023 for v in values), bool, len(values))
        arr = np.array([v if good else 0.0 for v, good in zip(values, ok)], dtype=np.float64)
    return arr, ok & np.isfinite(arr)


def _string_column(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(bytes values, rows whose value is bytes or text)."""
    values = list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = [v if type(v) is bytes else v.encode("utf-8") if type(v) is str else b"" for v in values]
    ok = np.fromiter((type(v) is bytes or type(v) is str for v in values), bool, len(values))
    return out, ok


_COLUMN_KINDS = {"int64": _int_column, "timestamp": _int_column, "float32": _float_column,
                 "float64": _float_column, "string": _string_column}


def interactions_of_columns(plan: ServingPlan, table: str, columns: Mapping[str, Any], n: int) -> InteractionBatch:
    """:func:`interactions_of` of ``n`` rows given as columns (lists or numpy arrays, ``MISSING`` for
    a field a row lacks; a column absent from ``columns`` is missing in every row).

    Rows whose values are already plan-typed (plain ints, finite floats, bytes/text) are checked
    and converted a column at a time; every other row goes through :func:`interactions_of` itself,
    so the result -- appends, and the error of a refused row -- is the reference's, row for row.
    """
    spec = plan.tables.get(table)
    if spec is None:
        raise RowError("table", f"unknown table {table!r}")
    hops = plan.hops_by_interaction_table.get(table)
    if not hops or n == 0:
        return InteractionBatch(n, (), {})
    needed = plan.interaction_columns[table]
    typed: dict[str, np.ndarray] = {}
    ok = np.ones(n, bool) if spec.primary_key else np.zeros(n, bool)  # no key: ids are hashed per row
    for col in needed:
        values = columns.get(col)
        if values is None:
            ok[:] = False
            typed[col] = np.zeros(n, np.int64)
            continue
        if len(values) != n:
            raise ValueError(f"{table}.{col}: column has {len(values)} values, expected {n}")
        typed[col], good = _COLUMN_KINDS[spec.columns[col]](values)
        ok &= good
    rows = np.flatnonzero(ok)
    fallback: dict[int, Any] = {}
    for i in np.flatnonzero(~ok).tolist():
        row = {}
        for col in needed:
            values = columns.get(col)
            if values is not None and values[i] is not MISSING:
                row[col] = values[i].item() if isinstance(values, np.ndarray) and values.dtype != object else values[i]
        fallback[i] = interactions_or_error(plan, table, row)
    if len(rows) == 0:
        return InteractionBatch(n, (), fallback)
    if len(rows) < n:
        typed = {c: a[rows] for c, a in typed.items()}
    if spec.primary_key and spec.columns[spec.primary_key] in ("int64", "timestamp"):
        event_id = typed[spec.primary_key]
    else:  # string keys: the stable hash of event_id_int
        event_id = np.fromiter((event_id_int(v) for v in typed[spec.primary_key]), np.int64, len(rows))
    event_time = typed[spec.time_column]
    out = tuple(HopRows(hop.key.key, rows, typed[hop.key.target.column], event_time, event_id,
                        {c: typed[c] for c in hop.columns}) for hop in hops)
    return InteractionBatch(n, out, fallback)


# what a row check may raise for content that does not fit the plan (RowError is a ValueError)
ROW_CHECK_ERRORS = (ValueError, TypeError, OverflowError)


def interactions_or_error(plan: ServingPlan, table: str, row: Any) -> "list[tuple[str, Any, Interaction]] | Exception":
    """:func:`interactions_of`, or the error it raises for content that does not fit the plan."""
    try:
        return interactions_of(plan, table, row)
    except ROW_CHECK_ERRORS as exc:
        return exc


def interactions_of_rows(plan: ServingPlan, table: str, rows: Sequence[Any]) -> InteractionBatch:
    """:func:`interactions_of_columns` of rows given as mappings (e.g. decoded records)."""
    needed = plan.interaction_columns.get(table, ())
    mappings = [r if isinstance(r, Mapping) else {} for r in rows]
    columns = {c: [r.get(c, MISSING) for r in mappings] for c in needed}
    batch = interactions_of_columns(plan, table, columns, len(rows))
    bad = [i for i, r in enumerate(rows) if not isinstance(r, Mapping)]
    if bad:  # not a row at all: the reference names it
        fallback = dict(batch.fallback)
        for i in bad:
            fallback[i] = interactions_or_error(plan, table, rows[i])
        batch = InteractionBatch(batch.n, batch.hops, fallback)
    return batch


def window_keys(plan: ServingPlan, fact_row: Mapping[str, Any]) -> list[WindowKey]:
    """The windows a fact row needs, one per hop (RTI hops, then label keys), in plan order."""
    keys = []
    for hop in plan.stored_hops:
        col = hop.key.source.column
        if col not in fact_row:
            raise RowError(f"{plan.fact_table}.{col}", "missing field (needed to find its real-time window)")
        keys.append((hop.key.key, coerce_value(plan.fact.columns[col], fact_row[col], f"{plan.fact_table}.{col}")))
    return keys


__all__ = [
    "MISSING", "ROW_CHECK_ERRORS", "HopRows", "Interaction", "InteractionBatch", "Window", "WindowKey",
    "interactions_of", "interactions_of_columns", "interactions_of_rows", "interactions_or_error", "window_keys",
    "with_known_time",
]
