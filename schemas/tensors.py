"""Rows in, tensors out: the single implementation shared by offline training and online scoring.

* :func:`interactions_of` turns one row of an interaction table into the window appends it
  causes (one per hop whose interaction table it belongs to). Live ingestion, backfill, offline
  replay and the scorer's optional self-append all call it.
* :func:`window_keys` names the windows a fact row needs (RTI hops, then label keys); a window
  store answers them as of the anchor time with :meth:`ServingPlan.window_bounds`.
* Label feedback: a label event is a row of the plan's label table; :func:`interactions_of` turns
  it into appends to the label windows, ordered by the time the label became known
  (:func:`with_known_time`: the event's known time, else the fact's time + ``delay``), and
  :func:`build_tensors` counts them per horizon (:func:`label_stats`).
* :func:`build_tensors` assembles the model inputs of one fact row, exactly the tensors of the
  plan, in the seed request's shapes: ``[1, 1]`` for ``anchor_time`` and the fact row, and
  ``[1, seq_len, 1]`` (actual length, no padding) for each RTI column. For a ranking plan the
  candidate column is ``[1, n_candidates, 1]``: the other inputs are shared by all candidates.

Because the distillation rows and the online requests both come out of :func:`build_tensors`,
train/serve skew in tensor construction cannot happen.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from schemas.plan import ANCHOR_TIME, DTYPES, FieldError, Hop, ServingPlan, TensorSpec


class RowError(FieldError):
    """A row or request that does not fit the plan. The message names the field."""


# ----- values ------------------------------------------------------------------------------------

def describe(value: Any) -> str:
    """A value in plain words for error messages: JSON's vocabulary, never a Python type or repr."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, np.integer)):
        return f"the integer {int(value)}"
    if isinstance(value, (float, np.floating)):
        return f"the number {float(value)!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f'the text "{shown}"'
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"binary data ({len(value)} bytes)"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "a list"
    return "a value of an unsupported kind"


def to_ns(value: Any, field: str = "timestamp") -> int:
    """An instant as int64 nanoseconds since the epoch (UTC).

    Accepts integers (already ns), ``datetime`` (naive = UTC), ``numpy.datetime64``, pandas
    ``Timestamp`` and ISO-8601 strings.
    """
    if isinstance(value, bool):
        raise RowError(field, f"expected a timestamp, got a boolean {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ns]").astype(np.int64))
    if hasattr(value, "value") and hasattr(value, "tz_localize"):  # pandas.Timestamp
        return int(value.value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        delta = value - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RowError(field, f"unparseable timestamp {describe(value)} (use int ns or ISO-8601)") from None
        return to_ns(parsed, field)
    raise RowError(field, f"expected a timestamp (int ns or ISO-8601), got {describe(value)}")


def coerce_value(dtype: str, value: Any, field: str) -> Any:
    """One cell, checked and converted to the plan dtype's Python value."""
    if value is None:
        raise RowError(field, "missing value (null)")
    if dtype == "timestamp":
        return to_ns(value, field)
    if dtype == "int64":
        if isinstance(value, bool):
            raise RowError(field, f"expected an integer, got {describe(value)}")
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise RowError(field, f"expected an integer, got {describe(value)}")
    if dtype in ("float32", "float64"):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise RowError(field, f"expected a number, got {describe(value)}")
        value = float(value)
        if not np.isfinite(value):
            raise RowError(field, f"expected a finite number, got {value!r}")
        return value
    if dtype == "string":
        if isinstance(value, bytes):
            return value
        if isinstance(value, (str, int, np.integer)) and not isinstance(value, bool):
            return str(value).encode("utf-8")
        raise RowError(field, f"expected a string, got {describe(value)}")
    raise RowError(field, f"unknown dtype {dtype!r}")


def coerce_row(plan: ServingPlan, table: str, row: Mapping[str, Any], *, columns: Iterable[str] | None = None,
               allow_extra: bool = True) -> dict[str, Any]:
    """Check a row of ``table`` against the plan and return it with plan-typed values."""
    spec = plan.tables.get(table)
    if spec is None:
        raise RowError("table", f"unknown table {table!r}")
    if not isinstance(row, Mapping):
        raise RowError(table, f"expected an object, got {describe(row)}")
    if not allow_extra:
        for key in row:
            if key not in spec.columns:
                raise RowError(f"{table}.{key}", f"unknown field; {table} has {list(spec.columns)}")
    out = {}
    for col in (spec.columns if columns is None else columns):
        if col not in row:
            raise RowError(f"{table}.{col}", "missing field")
        out[col] = coerce_value(spec.columns[col], row[col], f"{table}.{col}")
    return out


def event_id_int(value: Any) -> int:
    """A signed 64-bit id for any event id: integers as they are, strings by a stable hash."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        v = int(value)
        if -(2**63) <= v < 2**63:
            return v
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


# ----- windows -----------------------------------------------------------------------------------

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


def anchor_time_of(plan: ServingPlan, fact_row: Mapping[str, Any]) -> int:
    """The default anchor time of a fact row: its own event time."""
    col = plan.fact.time_column
    if col not in fact_row:
        raise RowError(f"{plan.fact_table}.{col}", "missing field (the event time is the anchor time)")
    return to_ns(fact_row[col], f"{plan.fact_table}.{col}")


# ----- tensors -----------------------------------------------------------------------------------

def _column_array(spec: TensorSpec, values: Any, length: int | None = None) -> np.ndarray:
    if spec.numpy_dtype == "object":
        arr = np.empty(len(values), dtype=object)
        arr[:] = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]
        return arr
    return np.asarray(values, dtype=spec.numpy_dtype)


def coerce_candidates(plan: ServingPlan, candidates: Any) -> list[Any]:
    """The candidate ids of one ranking request, checked against the plan (count and dtype)."""
    name = plan.candidate_tensor
    if not plan.is_ranking:
        raise RowError("candidates", f"plan {plan.name!r} scores single rows; it takes no candidates")
    if candidates is None:
        raise RowError("candidates", f"a ranking plan needs candidates (values of {name})")
    if isinstance(candidates, (str, bytes)) or not hasattr(candidates, "__len__"):
        raise RowError("candidates", f"expected a list of {name} values, got {describe(candidates)}")
    if not 1 <= len(candidates) <= plan.max_candidates:
        raise RowError("candidates", f"expected 1 to {plan.max_candidates} candidates, got {len(candidates)}")
    dtype = plan.fact.columns[plan.candidate_column]
    if dtype == "int64" and isinstance(candidates, np.ndarray) and candidates.dtype.kind in "iu":
        return candidates.astype(np.int64, copy=False).tolist()  # already typed: skip the per-item check
    return [coerce_value(dtype, c, f"candidates[{i}]") for i, c in enumerate(candidates)]


def label_stats(plan: ServingPlan, window: Window, anchor_time: int) -> dict[tuple[int, str], float]:
    """``(horizon ns, stat) -> value`` of one label window as of the anchor: per horizon h the
    labels with ``T - h <= known time < T`` (``count``), those with a label > 0 (``positives``)
    and their ratio (``rate``, 0 without labels). The window comes from the store, already cut to
    ``[T - longest horizon, T)``; the bounds are applied again so any longer window gives the same."""
    fb = plan.label_feedback
    known = np.asarray(window.event_time, np.int64)
    positive = np.asarray(window.columns[fb.label], np.float64) > 0
    out = {}
    for horizon in fb.horizons:
        inside = (known >= anchor_time - horizon.ns) & (known < anchor_time)
        count = int(inside.sum())
        pos = int((inside & positive).sum())
        out[(horizon.ns, "count")] = float(count)
        out[(horizon.ns, "positives")] = float(pos)
        out[(horizon.ns, "rate")] = pos / count if count else 0.0
    return out


def build_tensors(plan: ServingPlan, fact_row: Mapping[str, Any], windows: Mapping[str, Window],
                  anchor_time: int | None = None, candidates: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
    """The model inputs for one fact row, named and shaped exactly as in ``config.pbtxt``.

    ``windows`` maps each hop key to the entity's window as of ``anchor_time`` (already bounded
    by :meth:`ServingPlan.rti_bounds` and the hop's ``max_len``). ``anchor_time`` defaults to the
    fact row's own event time. Windows longer than ``max_len`` keep their newest entries.
    Ranking plans take ``candidates`` (the values of the candidate column to score; the fact
    row need not carry that column) and are refused without them; scoring plans refuse them.
    """
    if anchor_time is None:
        anchor_time = anchor_time_of(plan, fact_row)
    if plan.is_ranking or candidates is not None:
        ranked = coerce_candidates(plan, candidates)
        shared = tuple(c for c in plan.fact_columns if c != plan.candidate_column)
        typed = coerce_row(plan, plan.fact_table, fact_row, columns=shared)
    else:
        typed = coerce_row(plan, plan.fact_table, fact_row, columns=plan.fact_columns)
    out: dict[str, np.ndarray] = {}
    stats: dict[str, dict[tuple[int, str], float]] = {}
    for spec in plan.tensors:
        if spec.kind == "anchor":
            out[spec.name] = np.array([[anchor_time]], dtype=np.int64)
        elif spec.kind == "label":
            if spec.hop_key not in stats:
                window = windows.get(spec.hop_key)
                if window is None:
                    raise RowError(spec.hop_key, "no window given for this label key")
                stats[spec.hop_key] = label_stats(plan, window, anchor_time)
            out[spec.name] = np.array([[stats[spec.hop_key][(spec.horizon_ns, spec.stat)]]], dtype=np.float32)
        elif spec.kind == "fact":
            out[spec.name] = _column_array(spec, [typed[spec.column]]).reshape(1, 1)
        elif spec.kind == "candidate":
            out[spec.name] = _column_array(spec, ranked).reshape(1, -1, 1)
        else:
            window = windows.get(spec.hop_key)
            if window is None:
                raise RowError(spec.hop_key, "no window given for this hop")
            col = window.columns[spec.column]
            max_len = plan.hop(spec.hop_key).max_len
            if len(col) > max_len:
                col = col[-max_len:]
            out[spec.name] = _column_array(spec, col).reshape(1, -1, 1)
    return out


def check_tensors(plan: ServingPlan, tensors: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`RowError` unless ``tensors`` is exactly one request of the plan."""
    for name in tensors:
        if name not in plan.tensor_names:
            raise RowError(name, "unknown tensor for this plan")
    seq_len: dict[str, int] = {}
    for spec in plan.tensors:
        if spec.name not in tensors:
            raise RowError(spec.name, "missing tensor")
        arr = np.asarray(tensors[spec.name])
        want = np.dtype(spec.numpy_dtype)
        if arr.dtype != want and not (want == object and arr.dtype.kind in "OSU"):
            raise RowError(spec.name, f"expected {spec.triton_dtype}, got numpy {arr.dtype}")
        if spec.kind == "candidate":
            if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[2] != 1:
                raise RowError(spec.name, f"expected shape [1, n_candidates, 1], got {list(arr.shape)}")
            if not 1 <= arr.shape[1] <= plan.max_candidates:
                raise RowError(spec.name, f"expected 1 to {plan.max_candidates} candidates, got {arr.shape[1]}")
        elif spec.kind == "rti":
            if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[2] != 1:
                raise RowError(spec.name, f"expected shape [1, seq_len, 1], got {list(arr.shape)}")
            length = seq_len.setdefault(spec.hop_key, arr.shape[1])
            if arr.shape[1] != length:
                raise RowError(spec.name, f"seq_len {arr.shape[1]} differs from {length} of the same hop")
        elif arr.shape != (1, 1):
            raise RowError(spec.name, f"expected shape [1, 1], got {list(arr.shape)}")


# ----- batches ---------------------------------------------------------------------------------

# Padding marker in an RTI time column: a position whose event time is PAD_TIME holds no
# interaction. Single requests are never padded (seed shape); padding appears only when several
# requests of different lengths are stacked into one batch, by the client or inside the model.
PAD_TIME = np.iinfo(np.int64).min
# Padding marker of the candidates tensor of a ranking plan (integer ids; b"" for string ids).
# Models score padded candidates -inf and clients read the first n_candidates scores per row.
PAD_CANDIDATE = np.iinfo(np.int64).min


def stack_requests(plan: ServingPlan, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack requests (each with batch dim >= 1) into one batch, padding RTI to the longest.

    Padded positions carry ``PAD_TIME`` in the hop's time column and zeros (or b"") elsewhere, so
    a model recovers each sequence's true length from the time column alone.
    """
    if not requests:
        raise ValueError("stack_requests needs at least one request")
    out: dict[str, np.ndarray] = {}
    longest = {h: max(int(np.shape(r[f"{h}:{plan.hop(h).columns[0]}"])[1]) for r in requests) for h in plan.hop_keys}
    if plan.is_ranking:
        longest[plan.candidate_tensor] = max(int(np.shape(r[plan.candidate_tensor])[1]) for r in requests)
    for spec in plan.tensors:
        parts = [np.asarray(r[spec.name]) for r in requests]
        if not spec.ragged:
            out[spec.name] = np.concatenate(parts, axis=0)
            continue
        if spec.kind == "candidate":
            length = longest[spec.name]
            fill = b"" if spec.numpy_dtype == "object" else PAD_CANDIDATE
        else:
            length = longest[spec.hop_key]
            time_col = plan.interaction_table(plan.hop(spec.hop_key)).time_column
            fill = PAD_TIME if spec.column == time_col else (b"" if spec.numpy_dtype == "object" else 0)
        padded = []
        for arr in parts:
            if arr.shape[1] < length:
                pad = np.full((arr.shape[0], length - arr.shape[1], 1), fill, dtype=arr.dtype)
                arr = np.concatenate([arr, pad], axis=1)
            padded.append(arr)
        out[spec.name] = np.concatenate(padded, axis=0)
    return out


# ----- the seed's JSON request shape -------------------------------------------------------------

def to_triton_json(plan: ServingPlan, tensors: Mapping[str, np.ndarray]) -> dict:
    """The KServe-v2 JSON body of one request (the seed's shape), inputs in plan order."""
    inputs = []
    for spec in plan.tensors:
        arr = np.asarray(tensors[spec.name])
        data = arr.reshape(-1).tolist()
        if spec.numpy_dtype == "object":
            data = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in data]
        inputs.append({"name": spec.name, "datatype": spec.triton_dtype, "shape": list(arr.shape), "data": data})
    return {"inputs": inputs}


def from_triton_json(plan: ServingPlan, body: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Parse and check a seed-shaped JSON request; errors name the tensor."""
    if not isinstance(body, Mapping) or not isinstance(body.get("inputs"), list):
        raise RowError("inputs", "expected an object with a list 'inputs'")
    specs = {t.name: t for t in plan.tensors}
    out: dict[str, np.ndarray] = {}
    for i, item in enumerate(body["inputs"]):
        if not isinstance(item, Mapping):
            raise RowError(f"inputs[{i}]", "expected an object with name, datatype, shape, data")
        name = item.get("name")
        if name not in specs:
            raise RowError(f"inputs[{i}].name", f"unknown tensor {name!r}")
        spec = specs[name]
        if item.get("datatype") != spec.triton_dtype:
            raise RowError(name, f"datatype must be {spec.triton_dtype}, got {item.get('datatype')!r}")
        shape, data = item.get("shape"), item.get("data")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise RowError(name, f"shape must be a list of non-negative integers, got {shape!r}")
        if not isinstance(data, list) or len(data) != int(np.prod(shape)):
            raise RowError(name, f"data must be a flat list of {int(np.prod(shape))} values")
        try:
            values = [coerce_value(spec.dtype if spec.dtype != "timestamp" else "int64", v, name) for v in data]
        except RowError:
            raise
        out[name] = _column_array(spec, values).reshape(shape)
    check_tensors(plan, out)
    return out


__all__ = [
    "ANCHOR_TIME", "PAD_CANDIDATE", "PAD_TIME", "Interaction", "RowError", "Window", "WindowKey", "anchor_time_of", "build_tensors",
    "check_tensors", "coerce_candidates", "coerce_row", "coerce_value", "describe", "event_id_int", "from_triton_json", "interactions_of",
    "HopRows", "InteractionBatch", "MISSING", "ROW_CHECK_ERRORS", "interactions_of_columns", "interactions_of_rows", "interactions_or_error",
    "label_stats", "stack_requests", "to_ns", "to_triton_json", "window_keys", "with_known_time",
]
