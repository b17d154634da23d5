"""The value rules of the contract: what a cell, a timestamp or a number must be to enter relstream.

Cells become the plan dtype's Python value by :func:`coerce_value` / :func:`coerce_row` (the
lenient internal rule: an integer timestamp is already ns, :func:`to_ns`); refusals are
:class:`RowError`, worded by :func:`describe`; :func:`event_id_int` makes any event id an int64.

Client input has one definition, applied wherever rows enter: the HTTP scorer (one request's
values) and the offline loader (whole columns of training data) both call :func:`check_column`,
so a plan constraint such as ``{tx_amount: {min: 0}}`` cannot hold on one side and not the other.

* Timestamps a client sends are ISO-8601 strings or integers in the table's declared
  ``time_unit`` (:func:`timestamp_ns`); inside relstream they are int64 nanoseconds.
* A :class:`TimestampWindow` bounds instants around the server clock: an integer in the wrong
  unit (seconds read as nanoseconds lands in January 1970) or a far-future date is refused.
* Numeric columns respect the plan's ``constraints`` (``min`` / ``max``).

Error messages name the field and speak plain words (never a Python type name or repr).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from schemas.plan import ANCHOR_TIME, NS_PER, FieldError, ServingPlan

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class RowError(FieldError):
    """A row or request that does not fit the plan. The message names the field."""


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


@dataclass(frozen=True)
class TimestampWindow:
    """Plausible instants: ``[now - max_past_ns, now + max_future_ns]`` around the server clock."""

    max_past_ns: int
    max_future_ns: int

    def __post_init__(self):
        if self.max_past_ns <= 0 or self.max_future_ns < 0:
            raise ValueError("a timestamp window needs max_past_ns > 0 and max_future_ns >= 0")

    def bounds(self, now_ns: int) -> tuple[int, int]:
        return now_ns - self.max_past_ns, now_ns + self.max_future_ns


def iso(ns: int) -> str:
    """An instant in ns as ISO-8601 UTC (for messages); outside datetime's years, the raw ns."""
    try:
        moment = _EPOCH + _dt.timedelta(microseconds=ns // 1000)
    except OverflowError:
        return f"{ns} ns since the epoch"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ns % 1_000_000_000:09d}".rstrip("0").rstrip(".")) + "Z"


def _span(ns: int) -> str:
    for unit in ("days", "hours", "minutes", "seconds"):
        if ns % NS_PER[unit] == 0 and ns >= NS_PER[unit]:
            n = ns // NS_PER[unit]
            return f"{n} {unit[:-1] if n == 1 else unit}"
    return f"{ns} nanoseconds"


def timestamp_ns(value: Any, unit: str, field: str) -> int:
    """A client's timestamp as int64 ns: an integer in ``unit`` or an ISO-8601 string (no zone = UTC)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        ns = int(value) * NS_PER[unit]
        if not INT64_MIN <= ns <= INT64_MAX:
            raise RowError(field, f"{value} {unit} since the epoch is outside the years 1678-2262 (integer "
                                  f"timestamps here are {unit} since the epoch; or send an ISO-8601 string)")
        return ns
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise RowError(field, f"{describe(value)} is not an ISO-8601 date-time "
                                  f"(e.g. 2024-05-01T12:30:00Z) nor an integer in {unit}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.timezone.utc)
        delta = parsed - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    raise RowError(field, f"expected a timestamp: an integer in {unit} since the epoch or an ISO-8601 "
                          f"string, got {describe(value)}")


def _bounds(plan: ServingPlan, table: str, column: str, now_ns: int | None,
            window: TimestampWindow | None) -> tuple[float | None, float | None, str]:
    """(lowest allowed, highest allowed, what sets them) of one column; ``None`` = unbounded."""
    spec = plan.tables[table]
    dtype = "timestamp" if column == ANCHOR_TIME else spec.columns[column]
    if dtype == "timestamp":
        if window is None or now_ns is None:
            return None, None, ""
        lo, hi = window.bounds(now_ns)
        return lo, hi, "window"
    rule = spec.constraints.get(column)
    if rule is None:
        return None, None, ""
    return rule.min, rule.max, "plan"


def _unit_hint(ns: int, unit: str, lo: int, hi: int) -> str:
    """Which unit would have put the integer the client sent inside the window (the usual mistake)."""
    sent = ns // NS_PER[unit]
    for other in ("nanoseconds", "microseconds", "milliseconds", "seconds"):
        if other != unit and lo <= sent * NS_PER[other] <= hi:
            return f"; {sent} looks like {other}, but integer timestamps here are {unit} since the epoch " \
                   f"(or send an ISO-8601 string)"
    return ""


def _violation(value: Any, lo, hi, source: str, table: str, column: str, now_ns: int | None,
               window: TimestampWindow | None, unit: str, sent_integer: bool) -> str | None:
    if source == "window":
        if lo <= value <= hi:
            return None
        hint = _unit_hint(int(value), unit, lo, hi) if sent_integer else ""
        if value < lo:
            return (f"{iso(int(value))} is more than {_span(window.max_past_ns)} before the server clock "
                    f"({iso(now_ns)}){hint}")
        return (f"{iso(int(value))} is more than {_span(window.max_future_ns)} after the server clock "
                f"({iso(now_ns)}){hint}")
    if lo is not None and value < lo:
        return f"{value!r} is below the minimum of {lo!r} set by the plan (tables.{table}.constraints.{column})"
    if hi is not None and value > hi:
        return f"{value!r} is above the maximum of {hi!r} set by the plan (tables.{table}.constraints.{column})"
    return None


def check_column(plan: ServingPlan, table: str, column: str, values: Any, *, field: str | None = None,
                 now_ns: int | None = None, window: TimestampWindow | None = None,
                 sent_integer: bool = False) -> None:
    """Refuse values outside the column's rules; :class:`RowError` names the field.

    ``values``: one value (a request) or a numpy array (a column of training data; the message
    then names the first bad row). Timestamps are int64 ns, checked against ``window`` around
    ``now_ns`` when both are given; numeric columns against the plan's ``constraints``.
    ``sent_integer``: the client wrote the timestamp as an integer (enables the unit hint).
    """
    lo, hi, source = _bounds(plan, table, column, now_ns, window)
    if not source:
        return
    field = field or (ANCHOR_TIME if column == ANCHOR_TIME else f"{table}.{column}")
    unit = plan.tables[table].time_unit
    if isinstance(values, np.ndarray):
        bad = np.zeros(values.shape, bool)
        if lo is not None:
            bad |= values < lo
        if hi is not None:
            bad |= values > hi
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = values.reshape(-1)[i].item()
            why = _violation(value, lo, hi, source, table, column, now_ns, window, unit, sent_integer)
            raise RowError(field, f"row {i}: {why} ({int(bad.sum())} bad value(s))")
        return
    if isinstance(values, bool) or not isinstance(values, (int, float, np.integer, np.floating)):
        return  # not a number: the dtype check reports it
    why = _violation(values, lo, hi, source, table, column, now_ns, window, unit, sent_integer)
    if why is not None:
        raise RowError(field, why)


def _expected(dtype: str, unit: str) -> str:
    return {"int64": "an integer", "float32": "a number", "float64": "a number", "string": "a string",
            "timestamp": f"a timestamp (an integer in {unit} or an ISO-8601 string)"}.get(dtype, "a value")


def check_row(plan: ServingPlan, table: str, row: Mapping[str, Any], *, now_ns: int | None,
              window: TimestampWindow | None, nullable: tuple[str, ...] = (ANCHOR_TIME,)) -> dict:
    """A client's row (and its optional ``anchor_time``) checked against the value rules.

    Returns a copy whose timestamps are int64 ns. Refuses: null where a value is required,
    anything but an integer for integer columns (ids: ``290.0`` is not an id), timestamps that
    are neither integers in the table's ``time_unit`` nor ISO-8601, instants outside ``window``,
    values outside the plan's constraints. Fields the table does not have are left for the
    caller to refuse.
    """
    spec = plan.tables[table]
    out = dict(row)
    for key, value in row.items():
        dtype = "timestamp" if key == ANCHOR_TIME else spec.columns.get(key)
        if dtype is None:
            continue
        field = ANCHOR_TIME if key == ANCHOR_TIME else f"{table}.{key}"
        if value is None:
            if key in nullable:
                continue
            raise RowError(field, f"is null; send {_expected(dtype, spec.time_unit)}")
        if dtype == "timestamp":
            ns = timestamp_ns(value, spec.time_unit, field)
            check_column(plan, table, key, ns, field=field, now_ns=now_ns, window=window,
                         sent_integer=not isinstance(value, str))
            out[key] = ns
        else:
            if dtype == "int64" and (isinstance(value, bool) or not isinstance(value, int)):
                raise RowError(field, f"expected an integer, got {describe(value)}")
            if key in spec.constraints:
                check_column(plan, table, key, value, field=field)
    return out


__all__ = ["RowError", "TimestampWindow", "check_column", "check_row", "coerce_row", "coerce_value", "describe",
           "event_id_int", "iso", "timestamp_ns", "to_ns"]
