"""`relstream serve`: synchronous HTTP scoring for checkout flows (FastAPI).

    POST /v1/score    a fact row (the plan's fact columns, optional ``anchor_time``) -> score
    POST /v1/infer    the seed's Triton-shaped JSON (``{"inputs": [...]}``) -> model outputs
    GET  /healthz     the process is up
    GET  /readyz      Triton reachable with the model loaded, window store reachable
    GET  /metrics     Prometheus

Scoring endpoints need ``Authorization: Bearer <token>`` (the token comes from the environment
variable named by ``serve.token_env``) and ``Content-Type: application/json`` (415 otherwise).
Bodies are parsed with orjson (a key given twice is refused, 400), the row's values pass the
contract's value rules (:func:`schemas.values.check_row`: integer ids, timestamps as ISO-8601 or
integers in the plan's ``time_unit`` inside ``serve.timestamps`` around the server clock, the
plan's ``constraints``) and are checked against the
plan by :func:`scorer.pipeline.prepare_event` / :func:`schemas.tensors.from_triton_json`, so the
error names the field; the OpenAPI document carries JSON schemas generated from the same plan.

Concurrent requests are micro-batched (:class:`scorer.batcher.MicroBatcher`): one window-store
round trip and one Triton call per batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.plan import ANCHOR_TIME, ServingPlan
from schemas.tensors import from_triton_json
from schemas.values import RowError, check_row, describe

from .batch import Outcome
from .batcher import MicroBatcher
from .fallbacks import WindowFallback, WindowReader
from .http_api import (FLOAT32_MAX, INT64_MAX, INT64_MIN, SCORING_ERRORS, ApiError, HttpBatch, RequestGate,
                       error_response, json_response, outcome_error, value_schema)
from .metrics import CONTENT_TYPE_LATEST, ScorerMetrics
from .pipeline import PreparedEvent, allowed_fields, prepare_event, required_fields, score_record
from .recommend_http import mount_recommend
from .settings import ServeSettings
from .tasks import ScoringTask

log = logging.getLogger(__name__)
PATH = "http"


# ----- JSON schemas generated from the plan (for OpenAPI and clients) ---------------------------

def score_request_schema(plan: ServingPlan) -> dict:
    fact = plan.fact
    props = {c: value_schema(fact.columns[c], fact.constraints.get(c), fact.time_unit) for c in allowed_fields(plan)}
    anchor = value_schema("timestamp", unit=fact.time_unit)
    props[ANCHOR_TIME] = {"oneOf": anchor["oneOf"] + [{"type": "null"}],
                          "description": f"optional (absent or null: the row's {plan.fact.time_column})"}
    return {"type": "object", "title": f"{plan.fact_table} row",
            "description": f"One row of {plan.fact_table} (plan {plan.name!r}); the label is never sent.",
            "properties": props, "required": list(required_fields(plan)), "additionalProperties": False}


def score_response_schema(plan: ServingPlan) -> dict:
    return {"type": "object", "required": ["event_id", "entity_ids", "score", "model_name", "model_version",
                                           "latency_ms", "degraded", "cold_start", "scored_at"],
            "properties": {
                "event_id": {"type": "string"},
                "entity_ids": {"type": "object", "additionalProperties": {"type": "integer"}},
                "score": {"type": "number"},
                "model_name": {"type": "string"}, "model_version": {"type": "string"},
                "latency_ms": {"type": "number"},
                "degraded": {"type": "array", "items": {"type": "string"},
                             "description": "inputs served from a fallback (windows_unavailable, "
                                            "embedding_missing:<entity>)"},
                "cold_start": {"type": "array", "items": {"type": "string"},
                               "description": "entity columns the model scored without an embedding"},
                "scored_at": {"type": "integer", "description": "ns since the epoch (UTC)"}}}


def _tensor_item_schema(plan: ServingPlan, spec) -> dict:
    value = value_schema("int64" if spec.dtype == "timestamp" else spec.dtype)
    if spec.kind == "rti":
        max_len = plan.hop(spec.hop_key).max_len
        shape = {"type": "array", "prefixItems": [{"const": 1}, {"type": "integer", "minimum": 0,
                                                                 "maximum": max_len}, {"const": 1}],
                 "minItems": 3, "maxItems": 3,
                 "description": "[1, seq_len, 1]; seq_len equal for the columns of one hop"}
        data = {"type": "array", "items": value, "maxItems": max_len,
                "description": "seq_len values, oldest first"}
    else:
        shape = {"type": "array", "prefixItems": [{"const": 1}, {"const": 1}], "minItems": 2, "maxItems": 2}
        data = {"type": "array", "items": value, "minItems": 1, "maxItems": 1}
    return {"type": "object", "required": ["name", "datatype", "shape", "data"], "additionalProperties": False,
            "properties": {"name": {"const": spec.name}, "datatype": {"const": spec.triton_dtype},
                           "shape": shape, "data": data}}


def infer_request_schema(plan: ServingPlan) -> dict:
    """One request in the seed's shape: every plan tensor once, in plan order (as the seed lists
    them). What JSON Schema cannot say: len(data) == prod(shape), and one seq_len per hop."""
    items = [_tensor_item_schema(plan, spec) for spec in plan.tensors]
    return {"type": "object", "required": ["inputs"], "additionalProperties": False,
            "description": "KServe-v2 JSON of one request, exactly the plan's tensors (seed shape): "
                           + ", ".join(f"{t.name} {t.triton_dtype}" for t in plan.tensors),
            "properties": {"inputs": {"type": "array", "prefixItems": items, "items": False,
                                      "minItems": len(items), "maxItems": len(items)}}}


def infer_response_schema() -> dict:
    return {"type": "object", "required": ["model_name", "model_version", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape", "data"],
                                               "properties": {"name": {"type": "string"},
                                                              "datatype": {"type": "string"},
                                                              "shape": {"type": "array", "items": {"type": "integer"}},
                                                              "data": {"type": "array", "items": {"type": "number"}}}}}}}


# ----- the service ------------------------------------------------------------------------------

@dataclass
class ServeDeps:
    """The I/O edges of the HTTP service (injected, so tests use real servers explicitly)."""

    plan: ServingPlan
    triton: Any  # AsyncTritonScorer
    store: WindowReader | None
    settings: ServeSettings = field(default_factory=ServeSettings)
    token: str | None = None
    metrics: ScorerMetrics = field(default_factory=ScorerMetrics)
    store_ping: Callable[[], Any] | None = None
    now_ns: Callable[[], int] = time.time_ns
    on_close: list[Callable[[], Any]] = field(default_factory=list)
    ranker: Any = None  # ranking plans: the ranking model's client (default: one at triton's address)


class ScoringService:
    """The batch handler behind both scoring endpoints (items: a PreparedEvent for /v1/score,
    ready tensors for /v1/infer), through the one batch step of every path."""

    def __init__(self, deps: ServeDeps):
        self.deps = deps
        s = deps.settings
        self.plan = deps.plan
        self.metrics = deps.metrics
        self.fallback = WindowFallback(deps.plan, deps.store, deadline_s=s.window_deadline_ms / 1000,
                                       cooldown_s=s.window_cooldown_ms / 1000)
        self.executor = ThreadPoolExecutor(max_workers=s.window_threads, thread_name_prefix="windows")
        self.step = HttpBatch(ScoringTask(deps.plan), deps.triton, self.fallback, self.executor, self.metrics, PATH)
        self.batcher = MicroBatcher(self.handle_batch, window_s=s.batch_window_ms / 1000,
                                    max_batch=s.max_batch, max_in_flight=s.max_in_flight,
                                    min_interval_s=s.batch_interval_ms / 1000)

    async def handle_batch(self, items: Sequence[PreparedEvent | Mapping[str, np.ndarray]]) -> list:
        """Per item: (model output, its row, degraded flags, scored_at) or the ApiError of that item."""
        outcomes = await self.step(items)
        now = self.deps.now_ns()
        return [scored_or_error(o, now) for o in outcomes]

    async def close(self) -> None:
        await self.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)


def scored_or_error(outcome: Outcome, now: int):
    return outcome_error(outcome, "invalid_row", "row") or (outcome.output, outcome.row, outcome.degraded, now)


def _check_ranges(plan: ServingPlan, row: Mapping[str, Any]) -> None:
    """JSON integers are unbounded; the tensors are int64/float32."""
    for col, value in row.items():
        dtype = plan.fact.columns.get(col, "timestamp" if col == ANCHOR_TIME else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        where = ANCHOR_TIME if col == ANCHOR_TIME else f"{plan.fact_table}.{col}"
        if dtype in ("int64", "timestamp") and not INT64_MIN <= value <= INT64_MAX:
            raise RowError(where, f"integer {value} is outside the int64 range")
        if dtype == "float32" and abs(value) > FLOAT32_MAX:
            raise RowError(where, f"number {value} is outside the float32 range")


_INFER_ITEM_KEYS = ("name", "datatype", "shape", "data")


def _check_infer_body(body: Any) -> None:
    """What from_triton_json tolerates but the documented schema does not: unknown keys."""
    if not isinstance(body, dict):
        raise RowError("inputs", f"expected a JSON object with 'inputs', got {describe(body)}")
    for key in body:
        if key != "inputs":
            raise RowError(key, "unknown field; the body has only 'inputs'")
    items = body.get("inputs")
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict):
                for key in item:
                    if key not in _INFER_ITEM_KEYS:
                        raise RowError(f"inputs[{i}].{key}", f"unknown field; allowed: {list(_INFER_ITEM_KEYS)}")
                data = item.get("data")
                if item.get("datatype") == "FP32" and isinstance(data, list):
                    for v in data:
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > FLOAT32_MAX:
                            raise RowError(str(item.get("name")), f"{v!r} is outside the FP32 range")
                if item.get("datatype") == "INT64" and isinstance(data, list):
                    for v in data:  # orjson reads integers beyond int64 as floats: never round them
                        if isinstance(v, float) and abs(v) > 2**53:
                            raise RowError(str(item.get("name")), f"{v!r} is not an exact int64")
                shape = item.get("shape")
                if isinstance(shape, list):  # JSON Schema integers include 2.0
                    item["shape"] = [int(d) if isinstance(d, float) and d.is_integer() else d for d in shape]


class ScorerApp(FastAPI):
    """FastAPI for every route, except POSTs to ``raw_post_routes`` (the scoring endpoints), which
    go straight to their bare ASGI handler: the hot path pays for no middleware, routing or
    Request object. Everything else (lifespan, docs, health, metrics, mounted routers) is FastAPI."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.raw_post_routes: dict[str, Callable] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.raw_post_routes.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(deps: ServeDeps) -> FastAPI:
    plan, settings, metrics = deps.plan, deps.settings, deps.metrics
    service = ScoringService(deps)

    async def lifespan(app):
        service.batcher.start()
        if deps.store_ping is not None:  # open the Redis connection and the read thread up front,
            try:                         # so the first request does not pay for them
                loop = asyncio.get_running_loop()
                await asyncio.wait_for(loop.run_in_executor(service.executor, deps.store_ping), 2.0)
            except Exception as exc:  # noqa: BLE001 - serving starts anyway (degraded until it answers)
                log.warning("window store not reachable at start: %s", exc)
        try:
            yield
        finally:
            await service.close()
            for fn in deps.on_close:
                res = fn()
                if asyncio.iscoroutine(res):
                    await res

    app = ScorerApp(title="relstream scorer", version="1", lifespan=lifespan,
                  description=f"Real-time scoring with the distilled model of plan {plan.name!r}.")
    app.state.service = service
    app.state.deps = deps

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # pydantic's error dicts carry the input's repr: answer with locations and messages only
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return error_response(ApiError(422, "invalid_request", "; ".join(parts) or "invalid request"))

    gate = RequestGate(auth=settings.auth, token=deps.token, max_body_bytes=settings.max_body_bytes,
                       metrics=metrics, path=PATH)

    security = [{"bearerAuth": []}]

    # The two scoring routes are plain Starlette routes: FastAPI's dependency machinery costs
    # ~0.1-0.3 ms per request here, and their bodies are parsed by orjson + the plan anyway.
    # They are documented below with the JSON schemas generated from the plan.
    scoring_docs = {
        "/v1/score": {"post": {
            "summary": "Score one fact row", "operationId": "score_v1_score_post",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": score_request_schema(plan)}}},
            "responses": {"200": {"description": "The score", "content": {"application/json": {
                "schema": score_response_schema(plan)}}}, **SCORING_ERRORS},
            "security": security}},
        "/v1/infer": {"post": {
            "summary": "Pass-through of a Triton-shaped request (tensors built by the client)",
            "operationId": "infer_v1_infer_post",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": infer_request_schema(plan)}}},
            "responses": {"200": {"description": "Model outputs (KServe v2 JSON)", "content": {
                "application/json": {"schema": infer_response_schema()}}}, **SCORING_ERRORS},
            "security": security}},
    }
    total_seconds = metrics.stage_seconds.labels(PATH, "total")

    timestamp_window = settings.timestamps.window()

    async def score(auth: bytes | None, content_type: bytes | None, raw: bytes) -> bytes:
        t0 = time.perf_counter()
        body = gate.open(auth, content_type, raw)
        try:
            if not isinstance(body, dict):
                raise RowError(plan.fact_table, f"expected a JSON object (one row), got {describe(body)}")
            _check_ranges(plan, body)
            row = check_row(plan, plan.fact_table, body, now_ns=deps.now_ns(), window=timestamp_window)
            anchor = row.pop(ANCHOR_TIME, None)
            event = prepare_event(plan, row, anchor, strict=True, key_column=settings.key_column)
        except RowError as exc:
            metrics.errors.labels(PATH, "invalid_row").inc()
            raise ApiError(422, "invalid_row", str(exc), exc.field) from None
        out, i, degraded, now = await service.batcher.submit(event)
        latency = time.perf_counter() - t0
        record = score_record(plan, event, out.scores[i], out.cold_start[i], model_name=out.name_at(i),
                              model_version=out.version_at(i), latency_ms=latency * 1000,
                              degraded=degraded, scored_at=now)
        metrics.observe_record(PATH, record)
        total_seconds.observe(latency)
        return orjson.dumps(record)

    async def infer(auth: bytes | None, content_type: bytes | None, raw: bytes) -> bytes:
        t0 = time.perf_counter()
        body = gate.open(auth, content_type, raw)
        try:
            _check_infer_body(body)
            tensors = from_triton_json(plan, body)
        except RowError as exc:
            metrics.errors.labels(PATH, "invalid_tensors").inc()
            raise ApiError(422, "invalid_tensors", str(exc), exc.field) from None
        except (ValueError, TypeError, OverflowError) as exc:
            metrics.errors.labels(PATH, "invalid_tensors").inc()
            raise ApiError(422, "invalid_tensors", f"tensors do not fit the plan: {exc}") from None
        out, i, _, _ = await service.batcher.submit(tensors)
        total_seconds.observe(time.perf_counter() - t0)
        k = out.cold_start.shape[1]
        return orjson.dumps({"model_name": out.model_name, "model_version": out.model_version, "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [1, 1], "data": [float(out.scores[i])]},
            {"name": "cold_start", "datatype": "INT8", "shape": [1, k],
             "data": [int(v) for v in out.cold_start[i]]}]})

    # POSTs to the two scoring routes skip FastAPI/Starlette entirely (ScorerApp.__call__): the
    # middleware stack, routing and Request objects cost ~35 % of the service's CPU per request.
    # They stay registered below (405 for other methods) and are documented with the plan's schemas.
    app.raw_post_routes.update({"/v1/score": gate.asgi_route(score), "/v1/infer": gate.asgi_route(infer)})
    app.router.add_route("/v1/score", gate.starlette_route(score), methods=["POST"], include_in_schema=False)
    app.router.add_route("/v1/infer", gate.starlette_route(infer), methods=["POST"], include_in_schema=False)

    @app.get("/healthz", summary="Liveness")
    async def healthz():
        return json_response({"status": "ok"})

    @app.get("/readyz", summary="Readiness: Triton up with the model loaded, window store reachable",
             responses={503: {"description": "Not ready (reasons listed)"}})
    async def readyz():
        checks: dict[str, str] = {}
        ok, reason = await deps.triton.ready()
        checks["triton"] = reason
        ready = ok
        if deps.store_ping is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(service.executor, deps.store_ping), 1.0)
                checks["window_store"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["window_store"] = f"unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
                ready = False
        return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={
        200: {"description": "Prometheus text exposition format",
              "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema["paths"] = {**scoring_docs, **schema.get("paths", {})}
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": f"token from ${settings.token_env}"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    mount_recommend(app, deps, gate, service.fallback, service.executor)  # ranking plans: POST /v1/recommend
    return app
