"""`POST /v1/recommend`: rank candidate products for a household in session (ranking plans).

    {"household_id": 42,
     "session_events": [{purchase line}, ...],   # optional: lines not in Redis yet
     "anchor_time": 1700000000000000000,          # optional (int ns or ISO-8601); default: now
     "candidates": [p1, p2, ...] | {"from_catalog_top": 100},
     "k": 10,                                     # optional (serve.recommend.default_k)
     "exclude_session_items": true}               # optional

One request is one ranking example of the plan (``schemas/plans/recsys.yaml``): the household's
window as of the anchor (read from the window store, half-open ``[T - 30 d, T)``), merged with
the request's session events that fall in that interval, then ``schemas.tensors.build_tensors(...,
candidates=...)`` -- the builder the distillation rows come from -- and one Triton call for the
micro-batch. The answer is the top ``k`` candidates, best first.

* Session events: purchase lines of the household (``transactions`` columns; ``household_id`` may
  be left out). They are deduplicated by event id (``transaction_id``) among themselves; a line
  the window already holds (same event time and values: window rows carry no ids, and the lines
  of a household have distinct times by the session order) is not added twice. Lines at or after
  the anchor, or older than the look-back, are ignored, exactly as the window store would.
* Session items: the products of the open basket -- the basket of the newest line visible at the
  anchor. With ``exclude_session_items`` (default) they are not recommended again; pass false
  when a new basket starts (no line of it yet).
* Fallbacks as for /v1/score: window store down or past the deadline -> the request's session
  events only and ``degraded: ["windows_unavailable"]``; Triton down -> 503.

The Kafka path (:mod:`scorer.recommend_kafka`) ranks for each session event with the same
functions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq

from schemas.interactions import Interaction, Window, WindowKey, interactions_of, window_keys
from schemas.plan import ANCHOR_TIME, Hop, ServingPlan
from schemas.tensors import build_tensors, coerce_candidates
from schemas.values import (RowError, TimestampWindow, check_column, check_row, coerce_row, coerce_value, describe,
                            timestamp_ns)

from .pipeline import EMBEDDING_MISSING, cold_start_columns
from .settings import RecommendSettings
from .triton import AsyncTritonScorer, TritonRequestError, TritonScorer

log = logging.getLogger(__name__)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RANKING_OUTPUTS = ("score", "cold_start", "candidate_cold_start")
FROM_CATALOG_TOP = "from_catalog_top"
SESSION_EVENTS = "session_events"
OPTION_FIELDS = (SESSION_EVENTS, ANCHOR_TIME, "candidates", "k", "exclude_session_items")


# ----- settings ------------------------------------------------------------------------------------

def recommend_settings(section: Any) -> RecommendSettings:
    """The ``recommend`` sub-section of a ServeSettings/ScoreSettings (or a plain mapping)."""
    raw = getattr(section, "recommend", section)
    return raw if isinstance(raw, RecommendSettings) else RecommendSettings.model_validate(raw or {})


# ----- the catalog (candidate source "from_catalog_top") -----------------------------------------

def load_catalog(path: str | Path) -> np.ndarray:
    """Product ids of a bundle's ``catalog.parquet`` in rank order (``rank`` ascending if present)."""

    path = Path(path)
    table = pq.read_table(path)
    if "product_id" not in table.column_names:
        raise ValueError(f"{path}: catalog needs a product_id column (has {table.column_names})")
    ids = table.column("product_id").to_numpy().astype(np.int64)
    if "rank" in table.column_names:
        ids = ids[np.argsort(table.column("rank").to_numpy(), kind="stable")]
    return ids


def model_version_dir(repository: str | Path, model_name: str, version: str = "") -> Path | None:
    """The version directory Triton serves: ``version`` if given, else the highest number."""
    model_dir = Path(repository) / model_name
    if version:
        return model_dir / str(version)
    numbered = sorted((int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()), reverse=True)
    return model_dir / str(numbered[0]) if numbered else None


def find_catalog(repository: str | Path, model_name: str, version: str = "") -> Path | None:
    found = model_version_dir(repository, model_name, version)
    path = found / "catalog.parquet" if found is not None else None
    return path if path is not None and path.exists() else None


def with_catalog(cfg: Any, settings: Any) -> Any:
    """``settings`` (serve/score section) with ``recommend.catalog`` filled in from the model
    repository when it is not set (the catalog of the version Triton serves)."""
    rs = recommend_settings(settings)
    if rs.catalog:
        return settings
    name = getattr(settings, "model_name", None) or cfg.triton.model_name
    found = find_catalog(cfg.model_repository, name, getattr(settings, "model_version", "") or "")
    if found is None:
        log.warning("no catalog.parquet for model %r under %s: candidates must be explicit", name,
                    cfg.model_repository)
        return settings
    return settings.model_copy(update={"recommend": rs.model_copy(update={"catalog": str(found)})})


# ----- requests ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankRequest:
    """One validated ranking request (HTTP body or Kafka session event)."""

    fact_row: Mapping[str, Any]  # the shared fact columns (e.g. household_id)
    anchor_time: int
    keys: tuple[WindowKey, ...]  # one window per hop
    session: tuple[tuple[str, Any, Interaction], ...]  # appends of the session events
    candidates: Sequence[Any]
    k: int
    exclude_session_items: bool
    event_id: str = ""
    arrived: float = 0.0


def shared_columns(plan: ServingPlan) -> tuple[str, ...]:
    """Fact columns one ranking request carries once (all but the candidate column)."""
    return tuple(c for c in plan.fact_columns if c != plan.candidate_column)


def _int64(value: Any, where: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise RowError(where, f"integer {value} is outside the int64 range")


def _exact_int(value: Any, where: str) -> Any:
    """JSON Schema counts 5.0 as an integer; accept it when exact."""
    if isinstance(value, float) and value.is_integer():
        if abs(value) > 2**53:
            raise RowError(where, f"{value!r} is not an exact integer")
        return int(value)
    return value


def session_appends(plan: ServingPlan, events: Any, fact_row: Mapping[str, Any], *, limit: int,
                    field_name: str = SESSION_EVENTS, now_ns: int | None = None,
                    window: TimestampWindow | None = None) -> list[tuple[str, Any, Interaction]]:
    """Window appends of a request's session events; errors name ``session_events[i].<column>``.

    Each event passes the contract's value rules (:func:`schemas.values.check_row`: integer ids,
    timestamps in the table's unit or ISO-8601 and inside ``window``, plan constraints)."""
    if events is None:
        return []
    if not isinstance(events, list):
        raise RowError(field_name, f"expected a list of purchase lines, got {describe(events)}")
    if len(events) > limit:
        raise RowError(field_name, f"at most {limit} session events per request, got {len(events)}")
    hop_tables = {h.key.target.table for h in plan.hops}
    if len(hop_tables) != 1:
        raise RowError(field_name, f"plan {plan.name!r} has several interaction tables {sorted(hop_tables)}")
    table = next(iter(hop_tables))
    spec = plan.tables[table]
    out: list[tuple[str, Any, Interaction]] = []
    for i, raw in enumerate(events):
        where = f"{field_name}[{i}]"
        if not isinstance(raw, dict):
            raise RowError(where, f"expected an object (a row of {table}), got {describe(raw)}")
        row = dict(raw)
        for col in row:
            if col not in spec.columns or col == plan.label:
                raise RowError(f"{where}.{col}", f"unknown field; a session event has {list(spec.columns)}")
        for col, value in fact_row.items():  # the join columns default to the request's
            if col in spec.columns and col not in row:
                row[col] = value
        for col in list(row):
            _int64(row[col], f"{where}.{col}")
        try:
            row = check_row(plan, table, row, now_ns=now_ns, window=window, nullable=())
        except RowError as exc:
            raise RowError(f"{where}.{exc.field.split('.')[-1]}", str(exc).split(": ", 1)[-1]) from None
        for col, value in fact_row.items():
            if col in spec.columns and row[col] != value:
                raise RowError(f"{where}.{col}", f"{row[col]!r} is not the request's {col} {value!r}")
        try:
            coerce_row(plan, table, row, allow_extra=False)
            out.extend(interactions_of(plan, table, row))
        except RowError as exc:
            raise RowError(f"{where}.{exc.field.split('.')[-1]}", str(exc).split(": ", 1)[-1]) from None
    return out


def parse_candidates(plan: ServingPlan, raw: Any, catalog: np.ndarray) -> Sequence[Any]:
    """An explicit list (deduplicated, first occurrence kept) or ``{"from_catalog_top": N}``."""
    if isinstance(raw, dict):
        if set(raw) != {FROM_CATALOG_TOP}:
            extra = sorted(set(raw) - {FROM_CATALOG_TOP})
            raise RowError(f"candidates.{extra[0]}" if extra else "candidates",
                           f"unknown field; a candidate source is {{\"{FROM_CATALOG_TOP}\": N}}" if extra
                           else f"expected {{\"{FROM_CATALOG_TOP}\": N}}")
        n = _exact_int(raw[FROM_CATALOG_TOP], f"candidates.{FROM_CATALOG_TOP}")
        where = f"candidates.{FROM_CATALOG_TOP}"
        if isinstance(n, bool) or not isinstance(n, int):
            raise RowError(where, f"expected an integer, got {describe(n)}")
        if not len(catalog):
            raise RowError(where, "this server has no catalog (serve.recommend.catalog): send explicit candidates")
        most = min(plan.max_candidates, len(catalog))
        if not 1 <= n <= most:
            raise RowError(where, f"expected 1 to {most} (catalog of {len(catalog)} products, "
                                  f"at most {plan.max_candidates} candidates), got {n}")
        return catalog[:n]
    if isinstance(raw, list):
        if plan.fact.columns[plan.candidate_column] == "int64" and raw and all(type(v) is int for v in raw):
            try:  # the common case, vectorised: plain JSON integers (OverflowError: outside int64)
                arr = np.array(raw, dtype=np.int64)
            except OverflowError:
                arr = None
            if arr is not None:
                if not 1 <= len(arr) <= plan.max_candidates:
                    raise RowError("candidates", f"expected 1 to {plan.max_candidates} candidates, got {len(arr)}")
                _, first = np.unique(arr, return_index=True)
                return arr if len(first) == len(arr) else arr[np.sort(first)]
        integer_ids = plan.fact.columns[plan.candidate_column] == "int64"
        for i, v in enumerate(raw):
            if integer_ids and isinstance(v, float):  # ids are integers: 7.0 is not a product id
                raise RowError(f"candidates[{i}]", f"expected an integer, got {describe(v)}")
            _int64(v, f"candidates[{i}]")
        values = coerce_candidates(plan, raw)
        return list(dict.fromkeys(values)) if len(set(values)) != len(values) else values
    if raw is None:
        raise RowError("candidates", f"missing field: a list of {plan.candidate_column} values or "
                                     f"{{\"{FROM_CATALOG_TOP}\": N}}")
    raise RowError("candidates", f"expected a list of {plan.candidate_column} values or "
                                 f"{{\"{FROM_CATALOG_TOP}\": N}}, got {describe(raw)}")


def parse_request(plan: ServingPlan, body: Any, *, now_ns: Callable[[], int], catalog: np.ndarray,
                  settings: RecommendSettings, arrived: float = 0.0,
                  window: TimestampWindow | None = None) -> RankRequest:
    """Validate a /v1/recommend body; :class:`RowError` names the offending field.

    Ids must be integers (``7.0`` is refused); ``anchor_time`` is ISO-8601 or an integer in the
    plan's ``time_unit`` and, with ``window`` (``serve.timestamps``), near the server clock.
    """
    if not isinstance(body, dict):
        raise RowError("body", f"expected a JSON object, got {describe(body)}")
    shared = shared_columns(plan)
    for name in body:
        if name not in shared and name not in OPTION_FIELDS:
            raise RowError(name, f"unknown field; allowed: {list(shared) + list(OPTION_FIELDS)}")
    fact_row = {}
    for col in shared:
        if col not in body:
            raise RowError(col, "missing field")
        value = body[col]
        if value is None:
            raise RowError(col, "is null; a value is required")
        if plan.fact.columns[col] == "int64" and (isinstance(value, bool) or not isinstance(value, int)):
            raise RowError(col, f"expected an integer, got {describe(value)}")
        _int64(value, col)
        fact_row[col] = coerce_value(plan.fact.columns[col], value, col)
        check_column(plan, plan.fact_table, col, fact_row[col], field=col)
    now = now_ns()
    anchor_raw = body.get(ANCHOR_TIME)
    if anchor_raw is None:
        anchor = now
    else:
        anchor = timestamp_ns(anchor_raw, plan.fact.time_unit, ANCHOR_TIME)
        check_column(plan, plan.fact_table, ANCHOR_TIME, anchor, now_ns=now, window=window,
                     sent_integer=not isinstance(anchor_raw, str))
    k = _exact_int(body.get("k", settings.default_k), "k")
    if isinstance(k, bool) or not isinstance(k, int):
        raise RowError("k", f"expected an integer, got {describe(k)}")
    if not 1 <= k <= plan.max_candidates:
        raise RowError("k", f"expected 1 to {plan.max_candidates}, got {k}")
    exclude = body.get("exclude_session_items", True)
    if not isinstance(exclude, bool):
        raise RowError("exclude_session_items", f"expected true or false, got {exclude!r}")
    candidates = parse_candidates(plan, body.get("candidates"), catalog)
    session = session_appends(plan, body.get(SESSION_EVENTS), fact_row, limit=settings.max_session_events,
                              now_ns=now, window=window)
    return RankRequest(fact_row=fact_row, anchor_time=anchor, keys=tuple(window_keys(plan, fact_row)),
                       session=tuple(session), candidates=candidates, k=k, exclude_session_items=exclude,
                       arrived=arrived)


# ----- windows + session events ------------------------------------------------------------------

def merge_session(plan: ServingPlan, hop: Hop, window: Window, session: Sequence[Interaction],
                  anchor_time: int) -> Window:
    """The window as of ``anchor_time`` with the session events it does not hold yet.

    Only events inside ``plan.rti_bounds(anchor_time)`` count; duplicates (same event id) count
    once; an event the window already holds (same event time and values) is not added again.
    The result is ordered by event time and keeps the newest ``hop.max_len`` rows.
    """
    lo, hi = plan.rti_bounds(anchor_time)
    seen_ids: set[int] = set()
    fresh: list[Interaction] = []
    for it in session:
        if lo <= it.event_time < hi and it.event_id not in seen_ids:
            seen_ids.add(it.event_id)
            fresh.append(it)
    if not fresh:
        return window
    if len(window):
        same_time = np.isin(window.event_time, np.fromiter((it.event_time for it in fresh), np.int64, len(fresh)))
        if same_time.any():
            held = {(int(window.event_time[j]), tuple(_cell(window.columns[c][j]) for c in hop.columns))
                    for j in np.flatnonzero(same_time)}
            fresh = [it for it in fresh
                     if (it.event_time, tuple(_cell(it.values[c]) for c in hop.columns)) not in held]
            if not fresh:
                return window
    extra = Window.from_interactions(plan, hop, fresh)
    times = np.concatenate([window.event_time, extra.event_time])
    order = np.argsort(times, kind="stable")[-hop.max_len:]
    return Window(times[order], {c: np.concatenate([window.columns[c], extra.columns[c]])[order]
                                 for c in hop.columns})


def _cell(value: Any) -> Any:
    """Comparable cell: float32 columns round-trip through the store as float32."""
    if isinstance(value, (float, np.floating)):
        return float(np.float32(value))
    return value.item() if isinstance(value, np.generic) else value


def session_items(window: Window, candidate_column: str, session_column: str) -> np.ndarray:
    """Products of the open basket: lines whose ``session_column`` equals the newest line's."""
    if not len(window) or session_column not in window.columns or candidate_column not in window.columns:
        return np.zeros(0, np.int64)
    sessions = window.columns[session_column]
    return np.unique(window.columns[candidate_column][sessions == sessions[-1]])


def drop_items(candidates: Sequence[Any], items: np.ndarray) -> Sequence[Any]:
    if not len(items):
        return candidates
    arr = np.asarray(candidates)
    return arr[~np.isin(arr, items)]


# ----- Triton: one call per batch, per-candidate outputs --------------------------------------------

@dataclass(frozen=True)
class RankingOutput:
    scores: np.ndarray  # float32 [B, n_max] (padding: -inf)
    cold_start: np.ndarray  # int8 [B, K]
    candidate_cold_start: np.ndarray  # int8 [B, n_max]
    model_name: str
    model_version: str

    def name_at(self, i: int) -> str:
        return self.model_name

    def version_at(self, i: int) -> str:
        return self.model_version


def parse_ranking_result(result, model_name: str, batch: int) -> RankingOutput:
    arrays = [result.as_numpy(n) for n in RANKING_OUTPUTS]
    if any(a is None for a in arrays):
        raise TritonRequestError(f"model {model_name!r} must return outputs {list(RANKING_OUTPUTS)} (a ranking model)")
    scores, cold, cand_cold = arrays
    return RankingOutput(scores=np.asarray(scores, np.float32).reshape(batch, -1),
                         cold_start=np.asarray(cold).reshape(batch, -1).astype(np.int8),
                         candidate_cold_start=np.asarray(cand_cold).reshape(batch, -1).astype(np.int8),
                         model_name=model_name, model_version=str(result.get_response().model_version))


class AsyncRanker(AsyncTritonScorer):
    """asyncio gRPC client of a ranking model (HTTP path), answering :class:`RankingOutput`."""

    def __init__(self, plan: ServingPlan, url: str, model_name: str, model_version: str = "",
                 timeout_s: float = 10.0):
        super().__init__(plan, url, model_name, model_version, timeout_s,
                         outputs=RANKING_OUTPUTS, parse=parse_ranking_result)


class SyncRanker(TritonScorer):
    """Blocking gRPC client with the interface KafkaScorer expects of ``triton`` (infer(tensors),
    max_batch_size(), ready(), close(), model_name, url), answering :class:`RankingOutput`."""

    def __init__(self, plan: ServingPlan, url: str, model_name: str, model_version: str = "",
                 timeout_s: float = 10.0):
        super().__init__(plan, url, model_name, model_version, timeout_s,
                         outputs=RANKING_OUTPUTS, parse=parse_ranking_result)


# ----- ranking a batch (shared by HTTP and Kafka) ----------------------------------------------------

@dataclass
class Prepared:
    """A request with its merged windows and final candidates (None: nothing left to score)."""

    request: RankRequest
    windows: dict[str, Window]
    candidates: Sequence[Any] | None
    excluded: int = 0


def prepare(plan: ServingPlan, request: RankRequest, windows: Sequence[Window], settings: RecommendSettings) -> Prepared:
    merged: dict[str, Window] = {}
    for (hop_key, entity), window in zip(request.keys, windows):
        hop = plan.hop(hop_key)
        mine = [it for hk, e, it in request.session if hk == hop_key and e == entity]
        merged[hop_key] = merge_session(plan, hop, window, mine, request.anchor_time)
    candidates, excluded = request.candidates, 0
    if request.exclude_session_items and plan.hops:
        first = plan.hops[0].key.key
        items = session_items(merged[first], plan.candidate_column, settings.session_column)
        kept = drop_items(candidates, items)
        excluded = len(candidates) - len(kept)
        candidates = kept
    return Prepared(request, merged, candidates if len(candidates) else None, excluded)


def request_tensors(plan: ServingPlan, p: Prepared) -> dict[str, np.ndarray]:
    """The one tensor builder (offline rows and online requests alike)."""
    return build_tensors(plan, p.request.fact_row, p.windows, anchor_time=p.request.anchor_time,
                         candidates=p.candidates)


def top_items(candidates: Sequence[Any], scores: np.ndarray, cand_cold: np.ndarray, k: int) -> list[dict]:
    """The ``k`` best candidates, best first (ties: the candidate listed first)."""
    n = len(candidates)
    order = np.argsort(-scores[:n], kind="stable")[:k]
    ids = np.asarray(candidates)
    return [{"product_id": int(ids[j]) if ids.dtype.kind in "iu" else ids[j], "score": float(scores[j]),
             "cold_start": bool(cand_cold[j])} for j in order]


def degraded_flags(plan: ServingPlan, window_flags: Sequence[str], cold_row: np.ndarray | None) -> list[str]:
    """Fallback flags: the window store, and a missing embedding of a non-candidate key."""
    flags = list(window_flags)
    if cold_row is not None:
        flags += [f"{EMBEDDING_MISSING}{c}" for c in cold_start_columns(plan, cold_row) if c != plan.candidate_column]
    return flags


__all__ = ["AsyncRanker", "RankRequest", "RankingOutput", "RecommendSettings", "SyncRanker",
           "drop_items", "find_catalog", "load_catalog", "merge_session", "parse_request",
           "prepare", "recommend_settings", "request_tensors", "session_appends", "session_items", "top_items",
           "with_catalog"]
