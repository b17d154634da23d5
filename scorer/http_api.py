"""What every endpoint of `relstream serve` shares: errors, JSON bodies, auth, body limits, bare routes.

:class:`RequestGate` is the one door of the POST endpoints (``/v1/score``, ``/v1/infer``,
``/v1/recommend``): the bearer token, ``Content-Type: application/json`` (415), the body limit
``serve.max_body_bytes`` (413, on Content-Length and while the body streams in) and strict JSON
(400 for invalid JSON or a key given twice). :meth:`RequestGate.asgi_route` turns a handler into a
bare ASGI app (no middleware, routing or Request object: the hot path) and
:meth:`RequestGate.starlette_route` into the same endpoint behind Starlette's router.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any, Awaitable, Callable, Mapping

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response

from schemas.values import RowError

from .batch import Outcome, ServingTask, run_async, score_batch
from .metrics import ScorerMetrics
from .triton import TritonRequestError, TritonUnavailable

log = logging.getLogger(__name__)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)

# a POST handler: (Authorization header, Content-Type header, body) -> the JSON answer's bytes
Handler = Callable[[bytes | None, bytes | None, bytes], Awaitable[bytes]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None):
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})
        super().__init__(message)


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def error_response(err: ApiError) -> Response:
    return Response(error_body(err), status_code=err.status, media_type="application/json",
                    headers=err.headers)


# ----- JSON schemas of values and errors (OpenAPI) ----------------------------------------------

def value_schema(dtype: str, constraint=None, unit: str = "nanoseconds") -> dict:
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


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}}


def _error_doc(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


SCORING_ERRORS = {
    "400": _error_doc("Body is not valid JSON, or an object repeats a key"),
    "401": _error_doc("Missing or invalid bearer token"),
    "413": _error_doc("Body larger than serve.max_body_bytes"),
    "415": _error_doc("Content-Type is not application/json"),
    "422": _error_doc("Body does not fit the plan (the error names the field)"),
    "503": _error_doc("Triton unavailable or model not loaded (the reason is in the message)"),
}


# ----- JSON bodies ---------------------------------------------------------------------------------

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


JSON_HEADERS = [(b"content-type", b"application/json")]


def error_body(err: ApiError) -> bytes:
    body = {"error": {"code": err.code, "message": err.message}}
    if err.field:
        body["error"]["field"] = err.field
    return orjson.dumps(body)


class RequestGate:
    """Auth, media type, body limit and JSON decoding of the POST endpoints (see module doc).

    ``path`` labels the error metrics (``http``); ``token`` is None when the server has none.
    """

    def __init__(self, *, auth: bool, token: str | None, max_body_bytes: int, metrics: ScorerMetrics,
                 path: str = "http"):
        self.auth, self.max_body_bytes, self.metrics, self.path = auth, max_body_bytes, metrics, path
        self.token_bytes = token.encode() if token is not None else None

    def _count(self, what: str) -> None:
        self.metrics.errors.labels(self.path, what).inc()

    def authorize(self, header: str | bytes | None) -> None:
        """``header``: the Authorization header's value (bytes straight from the ASGI scope)."""
        if not self.auth:
            return
        if isinstance(header, str):
            header = header.encode("latin-1")
        scheme, _, given = (header or b"").partition(b" ")
        if self.token_bytes is None:
            raise ApiError(401, "unauthorized", "server has no API token configured",
                           headers={"WWW-Authenticate": "Bearer"})
        if scheme.lower() != b"bearer" or not given or not hmac.compare_digest(given.strip(), self.token_bytes):
            self._count("unauthorized")
            raise ApiError(401, "unauthorized", "missing or invalid bearer token",
                           headers={"WWW-Authenticate": "Bearer"})

    def parse_json(self, content_type: bytes | str | None, raw: bytes) -> Any:
        if not is_json_media_type(content_type):
            self._count("unsupported_media_type")
            raise unsupported_media_type(content_type)
        try:
            return decode_json(raw)
        except ApiError:
            self._count("bad_json")
            raise

    def open(self, auth: bytes | str | None, content_type: bytes | str | None, raw: bytes) -> Any:
        """The JSON body of an authorised request (401, 415, 400 otherwise)."""
        self.authorize(auth)
        return self.parse_json(content_type, raw)

    def too_large(self, size: int | str, declared: bool) -> ApiError:
        self._count("oversize")
        limit = self.max_body_bytes
        if declared:
            return ApiError(413, "body_too_large", f"body of {size} bytes exceeds the limit of {limit}")
        return ApiError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")

    async def read_body(self, scope: Mapping[str, Any], receive) -> tuple[bytes | None, bytes | None, bytes]:
        """(Authorization header, Content-Type header, body) of a raw ASGI request; 413 past
        ``max_body_bytes`` (checked on Content-Length and while the body streams in)."""
        limit = self.max_body_bytes
        auth = content_type = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length" and value.isdigit() and int(value) > limit:
                raise self.too_large(value.decode(), True)
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
                    raise self.too_large(size, False)
                chunks.append(chunk)
            body = b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientGone()
        if len(body) > limit:
            raise self.too_large(len(body), False)
        return auth, content_type, body

    def asgi_route(self, handler: Handler):
        """``handler`` as a bare ASGI app: no middleware stack, no Request object."""
        async def asgi(scope, receive, send) -> None:
            status, headers = 200, JSON_HEADERS
            try:
                auth, content_type, raw = await self.read_body(scope, receive)
                payload = await handler(auth, content_type, raw)
            except ClientGone:
                return
            except ApiError as err:
                status, payload = err.status, error_body(err)
                headers = JSON_HEADERS + [(k.lower().encode("latin-1"), str(v).encode("latin-1"))
                                          for k, v in err.headers.items()]
            except Exception:  # noqa: BLE001 - a bug answers 500 JSON, the server lives on
                log.exception("request failed")
                self._count("internal")
                status, payload = 500, error_body(ApiError(500, "internal_error",
                                                           "the server failed on this request (details in its log)"))
            await send({"type": "http.response.start", "status": status,
                        "headers": headers + [(b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
        return asgi

    def starlette_route(self, handler: Handler):
        """The same endpoint behind Starlette's router (reached only if the fast path is bypassed)."""
        async def endpoint(request: Request) -> Response:
            try:
                raw = await request.body()
                if len(raw) > self.max_body_bytes:
                    raise self.too_large(len(raw), False)
                return Response(await handler(request.headers.get("authorization"),
                                              request.headers.get("content-type"), raw),
                                media_type="application/json")
            except ApiError as err:
                return error_response(err)
        return endpoint


def outcome_error(outcome: Outcome, code: str, what: str) -> ApiError | None:
    """The HTTP error of one item of a batch (None: it was scored): 400 when Triton refused the
    request itself, 422 ``code`` when it does not fit the plan (the field named when known)."""
    err = outcome.error
    if err is None:
        return None
    if isinstance(err, TritonRequestError):
        return ApiError(400, "triton_rejected", str(err))
    if isinstance(err, RowError):
        return ApiError(422, code, str(err), err.field)
    return ApiError(422, code, f"{what} does not fit the plan's tensors: {err}")


class HttpBatch:
    """A micro-batch through the one batch step (:func:`scorer.batch.score_batch`), HTTP style:
    the windows are read on ``executor`` within the fallback's deadline; Triton unavailable fails
    the whole batch with 503 (the client retries: ``Retry-After``)."""

    def __init__(self, task: ServingTask, client: Any, fallback: Any, executor: Any, metrics: ScorerMetrics,
                 path: str = "http"):
        self.task, self.client, self.fallback, self.executor = task, client, fallback, executor
        self.metrics, self.path = metrics, path

    async def __call__(self, items) -> list[Outcome]:
        return await run_async(score_batch(self.task, items), self._read, self._infer)

    async def _read(self, keys, as_of):
        m = self.metrics
        with m.stage(self.path, "window_read"):
            read = await self.fallback.read_async(keys, as_of, self.executor)
        m.window_reads.labels(self.path).inc()
        return read

    async def _infer(self, tensors, size: int):
        m = self.metrics
        try:
            with m.stage(self.path, "triton"):
                m.triton_calls.labels(self.path).inc()
                out = await self.client.infer(tensors)
        except TritonUnavailable as exc:
            m.errors.labels(self.path, "triton_unavailable").inc()
            raise ApiError(503, "triton_unavailable", str(exc), headers={"Retry-After": "1"}) from None
        except TritonRequestError:
            if size == 1:
                m.errors.labels(self.path, "triton_rejected").inc()
            raise
        m.observe_model(out.model_name, out.model_version)
        m.batch_size.labels(self.path).observe(size)
        return out
