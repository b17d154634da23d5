"""Rows in, tensors out: the single implementation shared by offline training and online scoring.

* :func:`build_tensors` assembles the model inputs of one fact row, exactly the tensors of the
  plan, in the seed request's shapes: ``[1, 1]`` for ``anchor_time`` and the fact row, and
  ``[1, seq_len, 1]`` (actual length, no padding) for each RTI column. For a ranking plan the
  candidate column is ``[1, n_candidates, 1]``: the other inputs are shared by all candidates.
  Label windows are counted per horizon (:func:`label_stats`).
* :func:`stack_requests` pads and stacks requests into one batch; :func:`to_triton_json` and
  :func:`from_triton_json` speak the seed's KServe-v2 JSON request shape.

Because the distillation rows and the online requests both come out of :func:`build_tensors`,
train/serve skew in tensor construction cannot happen. The windows it reads are made by
:mod:`schemas.interactions`; cell values are checked by :mod:`schemas.values`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from schemas.interactions import Window
from schemas.plan import ServingPlan, TensorSpec
from schemas.values import RowError, coerce_row, coerce_value, describe, to_ns


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
    "PAD_CANDIDATE", "PAD_TIME", "anchor_time_of", "build_tensors", "check_tensors", "coerce_candidates",
    "from_triton_json", "label_stats", "stack_requests", "to_triton_json",
]
