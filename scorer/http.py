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
import hmac
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.plan import ANCHOR_TIME, ServingPlan
from schemas.tensors import RowError, describe, from_triton_json
from schemas.values import check_row

from .batcher import MicroBatcher
from .fallbacks import WindowFallback, WindowReader
from .metrics import CONTENT_TYPE_LATEST, ScorerMetrics
from .pipeline import (PreparedEvent, allowed_fields, batch_tensors, event_tensors, prepare_event,
                       required_fields, score_record, split_windows, window_requests)
from .settings import ServeSettings
from .triton import ModelOutput, TritonRequestError, TritonUnavailable

log = logging.getLogger(__name__)
PATH = "http"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None):
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})
        super().__init__(message)


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def _error_response(err: ApiError) -> Response:
    return Response(_error_body(err), status_code=err.status, media_type="application/json",
                    headers=err.headers)


# ----- JSON schemas generated from the plan (for OpenAPI and clients) ---------------------------

def _value_schema(dtype: str, constraint=None, unit: str = "nanoseconds") -> dict:
    if dtype == "int64":
        out = {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}
    elif dtype in ("float32", "float64"):
        limit = FLOAT32_MAX if dtype == "float32" else 1.7976931348623157e308
        out = {"type": "number", "minimum": -limit, "maximum": limit}
    else:
        out = None
    if out is not None:
        if constraint is not None:  # the plan's constraints (enforced: 422 outside)
            if constraint.min is not None:
                out["minimum"] = max(out["minimum"], constraint.min)
            if constraint.max is not None:
                out["maximum"] = min(out["maximum"], constraint.max)
        return out
    if dtype == "timestamp":
        # Integers are in the plan's time_unit; the server also refuses instants outside
        # serve.timestamps around its clock (not expressible here). ISO strings: years 1900-2199.
        return {"oneOf": [{"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX,
                           "description": f"{unit} since the epoch (UTC), within serve.timestamps of "
                                          "the server clock"},
                          {"type": "string", "format": "date-time", "pattern": "^(19|20|21)[0-9]{2}-",
                           "description": "ISO-8601 / RFC 3339, years 1900-2199"}]}
    return {"type": "string"}


def score_request_schema(plan: ServingPlan) -> dict:
    fact = plan.fact
    props = {c: _value_schema(fact.columns[c], fact.constraints.get(c), fact.time_unit) for c in allowed_fields(plan)}
    anchor = _value_schema("timestamp", unit=fact.time_unit)
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
    value = _value_schema("int64" if spec.dtype == "timestamp" else spec.dtype)
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


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}}


def _error_doc(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


_SCORING_ERRORS = {
    "400": _error_doc("Body is not valid JSON, or an object repeats a key"),
    "401": _error_doc("Missing or invalid bearer token"),
    "413": _error_doc("Body larger than serve.max_body_bytes"),
    "415": _error_doc("Content-Type is not application/json"),
    "422": _error_doc("Body does not fit the plan (the error names the field)"),
    "503": _error_doc("Triton unavailable or model not loaded (the reason is in the message)"),
}


# ----- the service ------------------------------------------------------------------------------

@dataclass
class _Item:
    event: PreparedEvent | None = None
    tensors: Mapping[str, np.ndarray] | None = None
    arrived: float = 0.0


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


class ScoringService:
    """The batch handler behind both scoring endpoints."""

    def __init__(self, deps: ServeDeps):
        self.deps = deps
        s = deps.settings
        self.plan = deps.plan
        self.metrics = deps.metrics
        self.fallback = WindowFallback(deps.plan, deps.store, deadline_s=s.window_deadline_ms / 1000,
                                       cooldown_s=s.window_cooldown_ms / 1000)
        self.executor = ThreadPoolExecutor(max_workers=s.window_threads, thread_name_prefix="windows")
        self.batcher = MicroBatcher(self.handle_batch, window_s=s.batch_window_ms / 1000,
                                    max_batch=s.max_batch, max_in_flight=s.max_in_flight,
                                    min_interval_s=s.batch_interval_ms / 1000)

    async def handle_batch(self, items: Sequence[_Item]) -> list:
        m, plan = self.metrics, self.plan
        events = [it.event for it in items if it.event is not None]
        keys, as_of = window_requests(events)
        degraded: tuple[str, ...] = ()
        windows_of: list = []
        if keys:
            with m.stage(PATH, "window_read"):
                read = await self.fallback.read_async(keys, as_of, self.executor)
            m.window_reads.labels(PATH).inc()
            degraded = read.degraded
            windows_of = split_windows(events, read.windows)
        results: list = [None] * len(items)
        requests, slots = [], []
        with m.stage(PATH, "tensor_build"):
            ev_i = 0
            for i, it in enumerate(items):
                if it.event is not None:
                    try:
                        requests.append(event_tensors(plan, it.event, windows_of[ev_i]))
                        slots.append(i)
                    except RowError as exc:
                        results[i] = ApiError(422, "invalid_row", str(exc), exc.field)
                    except (ValueError, TypeError, OverflowError) as exc:
                        results[i] = ApiError(422, "invalid_row", f"row does not fit the plan's tensors: {exc}")
                    ev_i += 1
                else:
                    requests.append(it.tensors)
                    slots.append(i)
            tensors = batch_tensors(plan, requests) if requests else None
        if tensors is None:
            return results
        outputs = await self._infer(tensors, requests)
        now = self.deps.now_ns()
        for j, i in enumerate(slots):
            out = outputs[j] if isinstance(outputs, list) else outputs
            if isinstance(out, Exception):
                results[i] = out
                continue
            row = j if not isinstance(outputs, list) else 0
            results[i] = (out, row, degraded if items[i].event is not None else (), now)
        m.batch_size.labels(PATH).observe(len(requests))
        return results

    async def _infer(self, tensors, requests) -> ModelOutput | list:
        m = self.metrics
        try:
            with m.stage(PATH, "triton"):
                m.triton_calls.labels(PATH).inc()
                out = await self.deps.triton.infer(tensors)
            m.observe_model(out.model_name, out.model_version)
            return out
        except TritonUnavailable as exc:
            m.errors.labels(PATH, "triton_unavailable").inc()
            raise ApiError(503, "triton_unavailable", str(exc), headers={"Retry-After": "1"}) from None
        except TritonRequestError as exc:
            if len(requests) == 1:
                m.errors.labels(PATH, "triton_rejected").inc()
                raise ApiError(400, "triton_rejected", str(exc)) from None
        # One request of the batch poisoned the call: answer each on its own.
        outs: list = []
        for req in requests:
            try:
                outs.append(await self._infer(batch_tensors(self.plan, [req]), [req]))
            except ApiError as exc:
                outs.append(exc)
        return outs

    async def close(self) -> None:
        await self.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)


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


_KEY_END = re.compile(rb'"[ \t\r\n]*:')  # JSON whitespace only


def _key_count(obj: Any) -> int:
    """Keys of the objects in a parsed body. Lists whose first item is not a container are not
    walked (tensor data): an undercount only sends the body down the exact check."""
    if type(obj) is dict:
        return len(obj) + sum(_key_count(v) for v in obj.values() if type(v) in (dict, list))
    if type(obj) is list and obj and type(obj[0]) in (dict, list):
        return sum(_key_count(v) for v in obj)
    return 0


def _refuse_repeated_key(pairs: list) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        self.key = key


def repeated_key(raw: bytes, parsed: Any) -> str | None:
    """The first key an object of the body gives twice (orjson keeps the last silently), else None.

    Fast path: every key of the text ends with a quote followed by a colon (whitespace allowed in
    between), so the text holds at least as many such matches as key tokens; when it holds exactly
    as many as the parsed objects hold keys, no key was repeated. Otherwise (a repeat, or ``":``
    inside a string) the body is parsed again, exactly, with the stdlib.
    """
    if len(_KEY_END.findall(raw)) == _key_count(parsed):
        return None
    try:
        json.loads(raw, object_pairs_hook=_refuse_repeated_key)
    except _RepeatedKey as exc:
        return exc.key
    except ValueError:  # orjson accepted it; a disagreement is not a repeated key
        return None
    return None


def is_json_media_type(value: bytes | str | None) -> bool:
    """``application/json`` (parameters such as charset allowed) or an ``application/*+json`` type."""
    if not value:
        return False
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def unsupported_media_type(value: bytes | str | None) -> ApiError:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    got = f'Content-Type "{value[:80]}"' if value else "no Content-Type header"
    return ApiError(415, "unsupported_media_type",
                    f"send the body as JSON with Content-Type: application/json (got {got})")


def decode_json(raw: bytes) -> Any:
    """A request body as JSON; :class:`ApiError` 400 for invalid JSON or a key given twice."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    key = repeated_key(raw, body)
    if key is not None:
        raise ApiError(400, "duplicate_key", f'the key "{key}" appears more than once in one JSON object; '
                                             "send each field once", field=key)
    return body


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


_JSON_HEADERS = [(b"content-type", b"application/json")]


def _error_body(err: ApiError) -> bytes:
    body = {"error": {"code": err.code, "message": err.message}}
    if err.field:
        body["error"]["field"] = err.field
    return orjson.dumps(body)


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
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # pydantic's error dicts carry the input's repr: answer with locations and messages only
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return _error_response(ApiError(422, "invalid_request", "; ".join(parts) or "invalid request"))

    token_bytes = deps.token.encode() if deps.token is not None else None

    def authorize(header: str | bytes | None) -> None:
        """``header``: the Authorization header's value (bytes straight from the ASGI scope)."""
        if not settings.auth:
            return
        if isinstance(header, str):
            header = header.encode("latin-1")
        scheme, _, given = (header or b"").partition(b" ")
        if token_bytes is None:
            raise ApiError(401, "unauthorized", "server has no API token configured",
                           headers={"WWW-Authenticate": "Bearer"})
        if scheme.lower() != b"bearer" or not given or not hmac.compare_digest(given.strip(), token_bytes):
            metrics.errors.labels(PATH, "unauthorized").inc()
            raise ApiError(401, "unauthorized", "missing or invalid bearer token",
                           headers={"WWW-Authenticate": "Bearer"})

    def parse_json(content_type: bytes | None, raw: bytes) -> Any:
        if not is_json_media_type(content_type):
            metrics.errors.labels(PATH, "unsupported_media_type").inc()
            raise unsupported_media_type(content_type)
        try:
            return decode_json(raw)
        except ApiError:
            metrics.errors.labels(PATH, "bad_json").inc()
            raise

    def too_large(size: int | str, declared: bool) -> ApiError:
        metrics.errors.labels(PATH, "oversize").inc()
        limit = settings.max_body_bytes
        if declared:
            return ApiError(413, "body_too_large", f"body of {size} bytes exceeds the limit of {limit}")
        return ApiError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")

    async def read_body(scope: Mapping[str, Any], receive) -> tuple[bytes | None, bytes | None, bytes]:
        """(Authorization header, Content-Type header, body) of a raw ASGI request; 413 past
        ``serve.max_body_bytes`` (checked on Content-Length and while the body streams in)."""
        limit = settings.max_body_bytes
        auth = content_type = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length" and value.isdigit() and int(value) > limit:
                raise too_large(value.decode(), True)
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body", False):
            chunks, size = [body], len(body)
            while message.get("more_body", False):
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large(size, False)
                chunks.append(chunk)
            body = b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientGone()
        if len(body) > limit:
            raise too_large(len(body), False)
        return auth, content_type, body

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
                "schema": score_response_schema(plan)}}}, **_SCORING_ERRORS},
            "security": security}},
        "/v1/infer": {"post": {
            "summary": "Pass-through of a Triton-shaped request (tensors built by the client)",
            "operationId": "infer_v1_infer_post",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": infer_request_schema(plan)}}},
            "responses": {"200": {"description": "Model outputs (KServe v2 JSON)", "content": {
                "application/json": {"schema": infer_response_schema()}}}, **_SCORING_ERRORS},
            "security": security}},
    }
    total_seconds = metrics.stage_seconds.labels(PATH, "total")

    timestamp_window = settings.timestamps.window()

    async def score(auth: bytes | None, content_type: bytes | None, raw: bytes) -> bytes:
        t0 = time.perf_counter()
        authorize(auth)
        body = parse_json(content_type, raw)
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
        out, i, degraded, now = await service.batcher.submit(_Item(event=event, arrived=t0))
        latency = time.perf_counter() - t0
        record = score_record(plan, event, out.scores[i], out.cold_start[i], model_name=out.name_at(i),
                              model_version=out.version_at(i), latency_ms=latency * 1000,
                              degraded=degraded, scored_at=now)
        metrics.observe_record(PATH, record)
        total_seconds.observe(latency)
        return orjson.dumps(record)

    async def infer(auth: bytes | None, content_type: bytes | None, raw: bytes) -> bytes:
        t0 = time.perf_counter()
        authorize(auth)
        body = parse_json(content_type, raw)
        try:
            _check_infer_body(body)
            tensors = from_triton_json(plan, body)
        except RowError as exc:
            metrics.errors.labels(PATH, "invalid_tensors").inc()
            raise ApiError(422, "invalid_tensors", str(exc), exc.field) from None
        except (ValueError, TypeError, OverflowError) as exc:
            metrics.errors.labels(PATH, "invalid_tensors").inc()
            raise ApiError(422, "invalid_tensors", f"tensors do not fit the plan: {exc}") from None
        out, i, _, _ = await service.batcher.submit(_Item(tensors=tensors, arrived=t0))
        total_seconds.observe(time.perf_counter() - t0)
        k = out.cold_start.shape[1]
        return orjson.dumps({"model_name": out.model_name, "model_version": out.model_version, "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [1, 1], "data": [float(out.scores[i])]},
            {"name": "cold_start", "datatype": "INT8", "shape": [1, k],
             "data": [int(v) for v in out.cold_start[i]]}]})

    def raw_route(handler: Callable[[bytes | None, bytes | None, bytes], Any]):
        """A scoring endpoint as a bare ASGI app: no middleware stack, no Request object."""
        async def asgi(scope, receive, send) -> None:
            status, headers = 200, _JSON_HEADERS
            try:
                auth, content_type, raw = await read_body(scope, receive)
                payload = await handler(auth, content_type, raw)
            except ClientGone:
                return
            except ApiError as err:
                status, payload = err.status, _error_body(err)
                headers = _JSON_HEADERS + [(k.lower().encode("latin-1"), str(v).encode("latin-1"))
                                           for k, v in err.headers.items()]
            except Exception as exc:  # noqa: BLE001 - a bug answers 500 JSON, the server lives on
                log.exception("scoring request failed")
                metrics.errors.labels(PATH, "internal").inc()
                status, payload = 500, _error_body(ApiError(500, "internal_error",
                                                            "the server failed on this request (details in its log)"))
            await send({"type": "http.response.start", "status": status,
                        "headers": headers + [(b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
        return asgi

    def via_request(handler):
        """The same endpoint behind Starlette's router (reached only if the fast path is bypassed)."""
        async def endpoint(request: Request) -> Response:
            try:
                raw = await request.body()
                if len(raw) > settings.max_body_bytes:
                    raise too_large(len(raw), False)
                return Response(await handler(request.headers.get("authorization"),
                                              request.headers.get("content-type"), raw),
                                media_type="application/json")
            except ApiError as err:
                return _error_response(err)
        return endpoint

    # POSTs to the two scoring routes skip FastAPI/Starlette entirely (ScorerApp.__call__): the
    # middleware stack, routing and Request objects cost ~35 % of the service's CPU per request.
    # They stay registered below (405 for other methods) and are documented with the plan's schemas.
    app.raw_post_routes.update({"/v1/score": raw_route(score), "/v1/infer": raw_route(infer)})
    app.router.add_route("/v1/score", via_request(score), methods=["POST"], include_in_schema=False)
    app.router.add_route("/v1/infer", via_request(infer), methods=["POST"], include_in_schema=False)

    @app.get("/healthz", summary="Liveness")
    async def healthz():
        return _json({"status": "ok"})

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
        return _json({"ready": ready, "checks": checks}, 200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={
        200: {"description": "Prometheus text exposition format",
              "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def openapi():
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema["paths"] = {**scoring_docs, **schema.get("paths", {})}
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": f"token from ${settings.token_env}"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    from .recommend import mount_recommend  # POST /v1/recommend for ranking plans (scorer/recommend.py)
    mount_recommend(app, deps)
    return app
