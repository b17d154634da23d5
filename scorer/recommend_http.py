"""``POST /v1/recommend``: ranked lists over HTTP for ranking plans (mounted by ``scorer.http``).

The request passes the same door as ``/v1/score`` (:class:`scorer.http_api.RequestGate`: token,
JSON media type, body limit on Content-Length and while streaming, strict JSON) and takes the
same bare-ASGI fast path; micro-batches go through the one step of every path
(:func:`scorer.batch.score_batch` with a :class:`scorer.tasks.RankingTask`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import orjson

from schemas.plan import ANCHOR_TIME, ServingPlan
from schemas.values import RowError

from .batch import Outcome
from .batcher import MicroBatcher
from .http_api import SCORING_ERRORS, ApiError, HttpBatch, RequestGate, outcome_error, value_schema
from .pipeline import cold_start_columns
from .recommend import (FROM_CATALOG_TOP, SESSION_EVENTS, AsyncRanker, Prepared, RankRequest, degraded_flags,
                        load_catalog, parse_request, recommend_settings, shared_columns, top_items)
from .settings import RecommendSettings
from .tasks import RankingTask

PATH = "recommend"  # metrics label of the HTTP ranking path


@dataclass
class Ranked:
    prepared: Prepared
    output: Any  # RankingOutput (or a routed one) | None: nothing to score
    row: int
    window_flags: tuple[str, ...]
    ranked_at: int


def ranked_or_error(outcome: Outcome, now: int) -> Ranked | ApiError:
    """The HTTP answer of one outcome of the batch step."""
    return outcome_error(outcome, "invalid_request", "request") or Ranked(outcome.prepared, outcome.output, outcome.row,
                                                                         outcome.degraded, now)


class RecommendService:
    """The micro-batch handler behind /v1/recommend: one window read and one Triton call per batch."""

    def __init__(self, deps: Any, settings: RecommendSettings, catalog: np.ndarray, *, fallback: Any,
                 executor: Any):
        self.deps, self.plan, self.settings, self.catalog = deps, deps.plan, settings, catalog
        self.metrics = deps.metrics
        # the ranking model's client: the app's (routed per entity when no version is pinned), or
        # one on the scoring client's address and model
        base = getattr(deps.triton, "base", deps.triton)
        self.ranker = deps.ranker or AsyncRanker(deps.plan, base.url, base.model_name, base.model_version,
                                                 timeout_s=base.timeout_s)
        self.step = HttpBatch(RankingTask(deps.plan, settings), self.ranker, fallback, executor, self.metrics, PATH)
        s = deps.settings
        # paced like /v1/score (serve.batch_interval_ms): each batch has a fixed cost (a Redis round
        # trip, a gRPC call, a Triton execute), so under load fewer, larger batches buy CPU
        self.batcher = MicroBatcher(self.handle_batch, window_s=s.batch_window_ms / 1000,
                                    max_batch=min(s.max_batch, settings.max_batch), max_in_flight=s.max_in_flight,
                                    min_interval_s=s.batch_interval_ms / 1000)

    async def handle_batch(self, items: Sequence[RankRequest]) -> list:
        outcomes = await self.step(items)
        now = self.deps.now_ns()
        return [ranked_or_error(o, now) for o in outcomes]

    def answer(self, ranked: Ranked, latency_s: float) -> dict:
        p, out, plan = ranked.prepared, ranked.output, self.plan
        req = p.request
        if out is None:  # every candidate was a session item: nothing to score
            items, cold_row, name, version = [], None, self.ranker.model_name, ""
        else:
            items = top_items(p.candidates, out.scores[ranked.row], out.candidate_cold_start[ranked.row], req.k)
            cold_row, name, version = out.cold_start[ranked.row], out.model_name, out.version_at(ranked.row)
        cold = [] if cold_row is None else cold_start_columns(plan, cold_row)
        return {**{c: (int(v) if isinstance(v, (int, np.integer)) else v) for c, v in req.fact_row.items()},
                "anchor_time": int(req.anchor_time), "items": items, "model_name": name, "model_version": version,
                "degraded": degraded_flags(plan, ranked.window_flags, cold_row), "cold_start": cold,
                "candidates_scored": 0 if p.candidates is None else len(p.candidates),
                "session_items_excluded": p.excluded, "latency_ms": latency_s * 1000, "ranked_at": ranked.ranked_at}

    def observe(self, body: dict, latency_s: float) -> None:
        m = self.metrics
        m.child(m.scored, PATH).inc()
        for reason in body["degraded"]:
            m.child(m.degraded, PATH, reason).inc()
        for entity in body["cold_start"]:
            m.child(m.cold_start, PATH, entity).inc()
        m.child(m.stage_seconds, PATH, "total").observe(latency_s)

    async def close(self) -> None:
        await self.batcher.stop()
        if self.deps.ranker is None:  # ours; the app's client is closed by the app
            await self.ranker.close()


def request_schema(plan: ServingPlan) -> dict:
    """JSON schema of the /v1/recommend body (OpenAPI)."""
    table = plan.hops[0].key.target.table if plan.hops else plan.fact_table
    cols = plan.tables[table].columns
    candidate = value_schema(plan.fact.columns[plan.candidate_column])
    props: dict[str, Any] = {c: value_schema(plan.fact.columns[c]) for c in shared_columns(plan)}
    anchor = value_schema("timestamp")
    props.update({
        SESSION_EVENTS: {"type": "array", "description": f"rows of {table} not yet in the window store",
                         "items": {"type": "object", "additionalProperties": False,
                                   "properties": {c: value_schema(d) for c, d in cols.items() if c != plan.label},
                                   "required": [c for c in cols if c not in shared_columns(plan) and c != plan.label]}},
        ANCHOR_TIME: {"oneOf": anchor["oneOf"] + [{"type": "null"}], "description": "default: now"},
        "candidates": {"oneOf": [
            {"type": "array", "items": candidate, "minItems": 1, "maxItems": plan.max_candidates},
            {"type": "object", "additionalProperties": False, "required": [FROM_CATALOG_TOP],
             "properties": {FROM_CATALOG_TOP: {"type": "integer", "minimum": 1, "maximum": plan.max_candidates}}}]},
        "k": {"type": "integer", "minimum": 1, "maximum": plan.max_candidates},
        "exclude_session_items": {"type": "boolean", "description": "do not recommend the open basket's products"},
    })
    return {"type": "object", "title": "ranking request", "additionalProperties": False, "properties": props,
            "required": [*shared_columns(plan), "candidates"]}


def response_schema(plan: ServingPlan) -> dict:
    item = {"type": "object", "required": ["product_id", "score", "cold_start"], "properties": {
        "product_id": {"type": "integer"}, "score": {"type": "number"}, "cold_start": {"type": "boolean"}}}
    props = {c: {"type": "integer"} for c in shared_columns(plan)}
    props.update({"anchor_time": {"type": "integer"}, "items": {"type": "array", "items": item},
                  "model_name": {"type": "string"}, "model_version": {"type": "string"},
                  "degraded": {"type": "array", "items": {"type": "string"}},
                  "cold_start": {"type": "array", "items": {"type": "string"}},
                  "candidates_scored": {"type": "integer"}, "session_items_excluded": {"type": "integer"},
                  "latency_ms": {"type": "number"}, "ranked_at": {"type": "integer"}})
    return {"type": "object", "required": ["items", "model_name", "model_version", "degraded", "latency_ms"],
            "properties": props}


def mount_recommend(app: Any, deps: Any, gate: RequestGate, fallback: Any, executor: Any) -> RecommendService | None:
    """Add ``POST /v1/recommend`` to the scorer app of a ranking plan (no-op for scoring plans)."""
    plan = deps.plan
    if not plan.is_ranking:
        return None
    settings = recommend_settings(deps.settings)
    catalog = load_catalog(settings.catalog) if settings.catalog else np.zeros(0, np.int64)
    service = RecommendService(deps, settings, catalog, fallback=fallback, executor=executor)
    deps.on_close.append(service.close)
    app.state.recommend = service
    metrics = deps.metrics
    timestamp_window = deps.settings.timestamps.window()

    async def recommend(auth: bytes | None, content_type: bytes | None, raw: bytes) -> bytes:
        t0 = time.perf_counter()
        body = gate.open(auth, content_type, raw)
        try:
            req = parse_request(plan, body, now_ns=deps.now_ns, catalog=service.catalog, settings=settings,
                                arrived=t0, window=timestamp_window)
        except RowError as exc:
            metrics.errors.labels(PATH, "invalid_request").inc()
            raise ApiError(422, "invalid_request", str(exc), exc.field) from None
        ranked = await service.batcher.submit(req)
        latency = time.perf_counter() - t0
        answer = service.answer(ranked, latency)
        service.observe(answer, latency)
        return orjson.dumps(answer)

    app.raw_post_routes["/v1/recommend"] = gate.asgi_route(recommend)
    app.router.add_route("/v1/recommend", gate.starlette_route(recommend), methods=["POST"], include_in_schema=False)
    docs = {"post": {
        "summary": "Top-k candidates for a household in session", "operationId": "recommend_v1_recommend_post",
        "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema(plan)}}},
        "responses": {"200": {"description": "The ranked items, best first", "content": {
            "application/json": {"schema": response_schema(plan)}}}, **SCORING_ERRORS},
        "security": [{"bearerAuth": []}]}}
    base_openapi = app.openapi

    def openapi():
        schema = base_openapi()
        schema.setdefault("paths", {})["/v1/recommend"] = docs
        return schema

    app.openapi = openapi
    return service
