"""Events -> window keys -> tensors -> one batched request -> score records, as plain functions.

The Kafka service and the HTTP server are thin I/O shells around these functions; both do:

    prepared = [prepare_event(plan, row) ...]            # validate, name the windows
    keys, as_of = window_requests(prepared)               # one store round trip for the batch
    windows = store.read_many(...)                        # (I/O, in the caller, with a deadline)
    tensors = batch_tensors(plan, prepared, windows)      # build_tensors per event + stack_requests
    output = triton.infer(tensors)                        # (I/O) one call
    records = score_records(plan, prepared, output, ...)  # one score record per event

Tensors come only from :func:`schemas.tensors.build_tensors` (the function the offline
distillation uses), so the online path cannot drift from training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from schemas.interactions import Interaction, Window, WindowKey, interactions_of, window_keys
from schemas.plan import ANCHOR_TIME, ServingPlan
from schemas.tensors import anchor_time_of, build_tensors, stack_requests
from schemas.values import RowError, check_column, coerce_row, coerce_value, describe, event_id_int, to_ns

# Degraded-flag vocabulary (strings in the score record's ``degraded`` array).
DEGRADED_WINDOWS = "windows_unavailable"  # window store down or past the deadline: empty windows
DEGRADED_REBUILDING = "windows_rebuilding"  # store lost its data or is being replayed: partial windows
EMBEDDING_MISSING = "embedding_missing:"  # + entity column: the model used its cold-start path


@dataclass(frozen=True)
class PreparedEvent:
    """A validated fact row, ready for a window read and tensor building."""

    event_id: str
    row: Mapping[str, Any]
    anchor_time: int
    keys: tuple[WindowKey, ...]
    entity_ids: Mapping[str, int]
    key: bytes  # Kafka key of the score record (the entity it is about)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DERIVED: dict[int, tuple[ServingPlan, dict]] = {}


def _derived(plan: ServingPlan) -> dict:
    """Per-plan constants of the hot path, computed once (plans are immutable)."""
    hit = _DERIVED.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    info = {"entity_columns": _entity_columns(plan), "allowed": _allowed_fields(plan),
            "required": _required_fields(plan)}
    _DERIVED[id(plan)] = (plan, info)
    return info


def entity_columns(plan: ServingPlan) -> tuple[str, ...]:
    return _derived(plan)["entity_columns"]


def allowed_fields(plan: ServingPlan) -> tuple[str, ...]:
    return _derived(plan)["allowed"]


def required_fields(plan: ServingPlan) -> tuple[str, ...]:
    return _derived(plan)["required"]


def _entity_columns(plan: ServingPlan) -> tuple[str, ...]:
    """Fact columns naming entities: embedding keys first, then hop sources, no repeats."""
    cols = [k.column for k in plan.embedding_keys]
    cols += [h.key.source.column for h in plan.hops]
    return tuple(dict.fromkeys(cols))


def _allowed_fields(plan: ServingPlan) -> tuple[str, ...]:
    """Fields a client may send for a fact row: the fact table's columns except the label."""
    return tuple(c for c in plan.fact.columns if c != plan.label)


def _required_fields(plan: ServingPlan) -> tuple[str, ...]:
    fact = plan.fact
    cols = list(plan.fact_columns) + [fact.time_column] + ([fact.primary_key] if fact.primary_key else [])
    cols += [h.key.source.column for h in plan.hops]
    return tuple(dict.fromkeys(c for c in cols if c is not None))


def _entity_id(value: Any) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return event_id_int(value)


def prepare_event(plan: ServingPlan, row: Mapping[str, Any], anchor_time: Any = None, *,
                  strict: bool = False, key_column: str | None = None) -> PreparedEvent:
    """Check one fact row against the plan; :class:`RowError` names the offending field.

    ``strict`` (the HTTP path) also rejects fields the fact table does not have, and the label.
    ``anchor_time`` defaults to the row's own event time (the plan's time column).
    """
    fact = plan.fact
    if not isinstance(row, Mapping):
        raise RowError(plan.fact_table, f"expected an object, got {describe(row)}")
    if strict:
        allowed = allowed_fields(plan)
        for name in row:
            if name == plan.label:
                raise RowError(f"{plan.fact_table}.{name}", "the label is never sent for scoring")
            if name not in allowed:
                raise RowError(f"{plan.fact_table}.{name}", f"unknown field; allowed: {list(allowed)}")
    for name in required_fields(plan):
        if name not in row or row[name] is None:
            what = "the event id" if name == fact.primary_key else (
                "the anchor time" if name == fact.time_column else "a model input")
            problem = "missing field" if name not in row else "is null; a value is required"
            raise RowError(f"{plan.fact_table}.{name}", f"{problem} ({what})")
    typed = coerce_row(plan, plan.fact_table, row, columns=plan.fact_columns)
    for col in fact.constraints:  # the plan's bounds hold on the Kafka path too (dead letter)
        if col in typed:
            check_column(plan, plan.fact_table, col, typed[col])
    for col, value in typed.items():  # tensors are int64: say which field does not fit
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            unit = " ns (years 1678-2262)" if fact.columns[col] == "timestamp" else ""
            raise RowError(f"{plan.fact_table}.{col}", f"{value}{unit} is outside the int64 range")
    anchor = to_ns(anchor_time, ANCHOR_TIME) if anchor_time is not None else anchor_time_of(plan, row)
    if not _INT64_MIN <= anchor <= _INT64_MAX:
        raise RowError(ANCHOR_TIME if anchor_time is not None else f"{plan.fact_table}.{fact.time_column}",
                       f"{anchor} ns is outside the int64 range (years 1678-2262)")
    keys = tuple(window_keys(plan, row))
    if fact.primary_key:
        raw_id = coerce_value(fact.columns[fact.primary_key], row[fact.primary_key],
                              f"{plan.fact_table}.{fact.primary_key}")
        event_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    else:
        event_id = str(event_id_int(repr(sorted(row.items()))))
    entities = {}
    for col in entity_columns(plan):
        value = coerce_value(fact.columns[col], row[col], f"{plan.fact_table}.{col}")
        entities[col] = _entity_id(value.decode() if isinstance(value, bytes) else value)
    key_col = key_column or (entity_columns(plan)[0] if entity_columns(plan) else None)
    key = str(entities[key_col]).encode() if key_col in entities else event_id.encode()
    return PreparedEvent(event_id=event_id, row=row, anchor_time=anchor, keys=keys,
                         entity_ids=entities, key=key)


def window_requests(events: Sequence[PreparedEvent]) -> tuple[list[WindowKey], list[int]]:
    """All window keys of a batch, flattened in event order, with the as-of time of each."""
    keys: list[WindowKey] = []
    as_of: list[int] = []
    for ev in events:
        keys.extend(ev.keys)
        as_of.extend([ev.anchor_time] * len(ev.keys))
    return keys, as_of


def empty_windows(plan: ServingPlan, keys: Sequence[WindowKey]) -> list[Window]:
    return [Window.empty(plan, plan.hop(hop_key)) for hop_key, _ in keys]


def event_tensors(plan: ServingPlan, event: PreparedEvent, windows: Sequence[Window]) -> dict[str, np.ndarray]:
    """One event's request (batch 1) from its windows, in the order of ``event.keys``."""
    by_hop = {hop_key: w for (hop_key, _), w in zip(event.keys, windows)}
    return build_tensors(plan, event.row, by_hop, anchor_time=event.anchor_time)


def split_windows(events: Sequence[PreparedEvent], windows: Sequence[Window]) -> list[Sequence[Window]]:
    out, i = [], 0
    for ev in events:
        out.append(windows[i:i + len(ev.keys)])
        i += len(ev.keys)
    if i != len(windows):
        raise ValueError(f"expected {i} windows for the batch, got {len(windows)}")
    return out


def batch_tensors(plan: ServingPlan, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several batch-1 requests stacked into one Triton request (padding marked by PAD_TIME)."""
    return stack_requests(plan, requests)


def cold_start_columns(plan: ServingPlan, cold_row: np.ndarray) -> list[str]:
    return [k.column for k, flag in zip(plan.embedding_keys, cold_row) if int(flag)]


def score_record(plan: ServingPlan, event: PreparedEvent, score: float, cold_row: np.ndarray, *,
                 model_name: str, model_version: str, latency_ms: float, degraded: Sequence[str],
                 scored_at: int) -> dict:
    """One record of ``schemas/avro/score.avsc``."""
    cold = cold_start_columns(plan, cold_row)
    flags = list(degraded) + [f"{EMBEDDING_MISSING}{c}" for c in cold]
    return {
        "event_id": event.event_id,
        "entity_ids": dict(event.entity_ids),
        "score": float(score),
        "model_name": model_name,
        "model_version": model_version,
        "latency_ms": float(latency_ms),
        "degraded": flags,
        "cold_start": cold,
        "scored_at": int(scored_at),
    }


def interactions_to_append(plan: ServingPlan, events: Sequence[PreparedEvent]) -> list[tuple[str, Any, Interaction]]:
    """Window appends caused by the scored facts themselves (optional self-append)."""
    out = []
    for ev in events:
        out.extend(interactions_of(plan, plan.fact_table, ev.row))
    return out


__all__ = ["DEGRADED_REBUILDING", "DEGRADED_WINDOWS", "EMBEDDING_MISSING", "PreparedEvent", "allowed_fields", "batch_tensors",
           "cold_start_columns", "empty_windows", "entity_columns", "event_tensors", "interactions_to_append",
           "prepare_event", "required_fields", "score_record", "split_windows", "window_requests"]
