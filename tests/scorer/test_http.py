"""`relstream serve` against the real session stack: scoring, auth, validation, OpenAPI, health,
micro-batching."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from schemas.tensors import build_tensors, to_triton_json
from tests.scorer.conftest import AUTH, BASE_T, SECOND, ServerThread, fact_row, history, make_app

pytestmark = pytest.mark.timeout(120)


def direct_score(plan, stack, model_name, row, windows):
    from scorer.triton import TritonScorer
    client = TritonScorer(plan, stack.triton_grpc_url, model_name)
    try:
        return client.infer(build_tensors(plan, row, windows))
    finally:
        client.close()


def test_score_matches_direct_triton_call(plan, stack, test_model, window_store):
    past = [fact_row(i, customer=7, terminal=100 + i, amount=5.0 * i) for i in range(1, 6)]
    past += [fact_row(i, customer=50 + i, terminal=11, amount=2.0 * i) for i in range(6, 9)]
    window_store.append(history(plan, past))
    row = fact_row(20, customer=7, terminal=11, amount=42.5)
    windows = {h.key.key: window_store.read(h.key.key, k, row["tx_datetime"])
               for h, k in zip(plan.hops, (7, 11))}
    assert [len(w) for w in windows.values()] == [5, 3]
    expected = direct_score(plan, stack, test_model, row, windows)

    with ServerThread(make_app(plan, stack, test_model, window_store)) as srv:
        r = httpx.post(f"{srv.url}/v1/score", json=row, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["score"] == pytest.approx(float(expected.scores[0]), abs=1e-6)
    assert body["event_id"] == "20"
    assert body["entity_ids"] == {"customer_id": 7, "terminal_id": 11}
    assert body["model_name"] == test_model and body["model_version"] == "1"
    assert body["degraded"] == [] and body["cold_start"] == []
    assert body["latency_ms"] > 0


def test_anchor_time_bounds_the_windows(plan, stack, test_model, window_store):
    window_store.append(history(plan, [fact_row(i, customer=7) for i in range(1, 6)]))
    row = fact_row(30, customer=7)
    early = BASE_T + 3 * SECOND  # sees interactions 1 and 2 only
    windows = {h.key.key: window_store.read(h.key.key, k, early) for h, k in zip(plan.hops, (7, 11))}
    assert len(windows[plan.hops[0].key.key]) == 2
    from scorer.triton import TritonScorer
    client = TritonScorer(plan, stack.triton_grpc_url, test_model)
    expected = client.infer(build_tensors(plan, row, windows, anchor_time=early))
    client.close()
    with ServerThread(make_app(plan, stack, test_model, window_store)) as srv:
        r = httpx.post(f"{srv.url}/v1/score", json={**row, "anchor_time": early}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["score"] == pytest.approx(float(expected.scores[0]), abs=1e-6)


def test_cold_start_is_flagged(plan, stack, test_model, window_store):
    row = fact_row(1, customer=5000, terminal=11)  # the test model has embeddings for ids 1..999
    with ServerThread(make_app(plan, stack, test_model, window_store)) as srv:
        r = httpx.post(f"{srv.url}/v1/score", json=row, headers=AUTH)
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["cold_start"] == ["customer_id"]
    assert "embedding_missing:customer_id" in body["degraded"]


def test_infer_pass_through_matches_direct_call(plan, stack, test_model, window_store):
    window_store.append(history(plan, [fact_row(i, customer=7) for i in range(1, 4)]))
    row = fact_row(10, customer=7)
    windows = {h.key.key: window_store.read(h.key.key, k, row["tx_datetime"]) for h, k in zip(plan.hops, (7, 11))}
    tensors = build_tensors(plan, row, windows)
    expected = direct_score(plan, stack, test_model, row, windows)
    with ServerThread(make_app(plan, stack, test_model, window_store)) as srv:
        r = httpx.post(f"{srv.url}/v1/infer", json=to_triton_json(plan, tensors), headers=AUTH)
        bad = to_triton_json(plan, tensors)
        bad["inputs"][0]["datatype"] = "FP32"
        r_bad = httpx.post(f"{srv.url}/v1/infer", json=bad, headers=AUTH)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["score"]["data"][0] == pytest.approx(float(expected.scores[0]), abs=1e-6)
    assert out["cold_start"]["data"] == [0, 0]
    assert r_bad.status_code == 422 and r_bad.json()["error"]["field"] == "anchor_time"


def test_auth_validation_and_docs(plan, stack, test_model, window_store):
    row = fact_row(1)
    with ServerThread(make_app(plan, stack, test_model, window_store, max_body_bytes=4096)) as srv:
        u = srv.url
        assert httpx.post(f"{u}/v1/score", json=row).status_code == 401
        r = httpx.post(f"{u}/v1/score", json=row, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{u}/v1/infer", json={"inputs": []}).status_code == 401

        def err(body, **kw):
            kw = {"json": body} if body is not None else kw
            r = httpx.post(f"{u}/v1/score", **{"headers": AUTH, **kw})
            return r.status_code, r.json()["error"]

        status, e = err({**row, "colour": "red"})
        assert status == 422 and e["field"] == "transactions.colour" and "unknown field" in e["message"]
        status, e = err({**row, "tx_amount": "a lot"})
        assert status == 422 and e["field"] == "transactions.tx_amount" and "expected a number" in e["message"]
        status, e = err({k: v for k, v in row.items() if k != "transaction_id"})
        assert status == 422 and e["field"] == "transactions.transaction_id" and "event id" in e["message"]
        status, e = err({**row, "tx_fraud": 1})
        assert status == 422 and e["field"] == "transactions.tx_fraud"
        status, e = err({**row, "customer_id": 2**70})
        assert status == 422 and e["field"] == "transactions.customer_id"
        status, e = err([row])
        assert status == 422
        status, e = err(None, content=b"{not json", headers={**AUTH, "content-type": "application/json"})
        assert status == 400 and e["code"] == "invalid_json"
        status, e = err({**row, "pad": "x" * 5000})
        assert status == 413 and e["code"] == "body_too_large"

        assert httpx.get(f"{u}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{u}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"triton": "ok", "window_store": "ok"}
        metrics = httpx.get(f"{u}/metrics").text
        assert 'relstream_scorer_errors_total{kind="unauthorized",path="http"}' in metrics
        doc = httpx.get(f"{u}/openapi.json").json()
    score_op = doc["paths"]["/v1/score"]["post"]
    schema = score_op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) >= {"transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"}
    assert "tx_fraud" not in schema["properties"]
    assert {"200", "401", "413", "422", "503"} <= set(score_op["responses"])
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "/v1/infer" in doc["paths"] and "/readyz" in doc["paths"]


def test_concurrent_requests_share_one_window_read_and_one_triton_call(plan, stack, test_model, window_store):
    window_store.append(history(plan, [fact_row(i, customer=7 + i % 3) for i in range(1, 30)]))
    rows = [fact_row(100 + i, customer=7 + i % 3, terminal=11 + i % 5, amount=float(i)) for i in range(16)]
    # A wide collection window: 16 concurrent requests land in one batch.
    app = make_app(plan, stack, test_model, window_store, batch_window_ms=50, max_batch=64)
    metrics = app.state.deps.metrics

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            return await asyncio.gather(*(client.post("/v1/score", json=r) for r in rows))

    with ServerThread(app) as srv:
        replies = asyncio.run(fire(srv.url))
    assert [r.status_code for r in replies] == [200] * 16
    assert metrics.value("relstream_scorer_triton_calls_total", {"path": "http"}) == 1
    assert metrics.value("relstream_scorer_window_reads_total", {"path": "http"}) == 1
    assert metrics.value("relstream_scorer_batch_size_count", {"path": "http"}) == 1
    assert metrics.value("relstream_scorer_batch_size_sum", {"path": "http"}) == 16
    # and each answer is its own event's score (batching must not mix rows up)
    singles = []
    for row in rows:
        windows = {h.key.key: window_store.read(h.key.key, k, row["tx_datetime"])
                   for h, k in zip(plan.hops, (row["customer_id"], row["terminal_id"]))}
        singles.append(float(direct_score(plan, stack, test_model, row, windows).scores[0]))
    np.testing.assert_allclose([r.json()["score"] for r in replies], singles, atol=1e-6)
    assert [r.json()["event_id"] for r in replies] == [str(r["transaction_id"]) for r in rows]


def test_chunked_bodies_on_the_bare_asgi_route(plan, stack, test_model, window_store):
    """The scoring routes read the body straight from ASGI: a chunked upload (no Content-Length)
    is reassembled, and one growing past serve.max_body_bytes is cut off with 413; GET gets 405."""
    import orjson
    row = fact_row(3)
    raw = orjson.dumps(row)

    def chunks(data: bytes, size: int):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    with ServerThread(make_app(plan, stack, test_model, window_store, max_body_bytes=4096)) as srv:
        headers = {**AUTH, "content-type": "application/json"}
        ok = httpx.post(f"{srv.url}/v1/score", content=chunks(raw, 7), headers=headers)
        assert ok.status_code == 200 and ok.json()["event_id"] == str(row["transaction_id"])
        big = orjson.dumps({**row, "pad": "x" * 10_000})
        r = httpx.post(f"{srv.url}/v1/score", content=chunks(big, 1000), headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert httpx.get(f"{srv.url}/v1/score", headers=AUTH).status_code == 405
        assert httpx.post(f"{srv.url}/v1/nope", json=row, headers=AUTH).status_code == 404
