"""POST /v1/recommend on the real Redis + Triton (untrained ranker of the recsys plan)."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from rti_store import MemoryWindowStore, RedisWindowStore
from schemas.interactions import interactions_of
from schemas.plan_loading import builtin_plan
from tests.scorer.conftest import AUTH, TOKEN, ServerThread
from tests.scorer.recsys_fixtures import RANKER, T0, expected_top, load_ranker, reference_ranking

MIN = 60 * 10**9
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def recsys():
    return builtin_plan("recsys")


@pytest.fixture(scope="module")
def ranker(recsys, stack):
    return load_ranker(recsys, stack)


@pytest.fixture
def store(recsys, redis_client):
    s = RedisWindowStore(recsys, redis_client, key_prefix="rec-test")
    s.mark_complete("rec-test")  # filled by the tests directly, not by ingest
    yield s
    s.close()


def line(i, t, product, basket, household=7):
    return {"transaction_id": i, "transaction_timestamp": t, "household_id": household, "product_id": product,
            "basket_id": basket, "quantity": 1 + i % 3, "sales_value": float(np.float32(1.25 * (i % 7 + 1)))}


def app_for(plan, stack, store, ranker_dir, *, triton_url=None, now_ns=None, **recommend):
    from scorer.http import ServeDeps, create_app
    from scorer.settings import ServeSettings
    from scorer.triton import AsyncTritonScorer
    s = ServeSettings(window_deadline_ms=2000, recommend={"catalog": str(ranker_dir / "catalog.parquet"), **recommend})
    triton = AsyncTritonScorer(plan, triton_url or stack.triton_grpc_url, RANKER, timeout_s=5)
    deps = ServeDeps(plan=plan, triton=triton, store=store, settings=s, token=TOKEN, on_close=[triton.close],
                     **({"now_ns": now_ns} if now_ns else {}))
    return create_app(deps)


def history(household=7):
    """Two earlier baskets (yesterday, last week) and the open basket's first three lines."""
    rows = [line(i, T0 - 1440 * MIN + i, 100 + i, 1, household) for i in range(6)]
    rows += [line(10 + i, T0 - 7 * 1440 * MIN + i, 200 + i, 2, household) for i in range(4)]
    rows += [line(20 + i, T0 - 10 * MIN + i, 300 + i, 3, household) for i in range(3)]
    return rows


def windows_of(plan, rows, anchor):
    mem = MemoryWindowStore(plan)
    mem.append([a for r in rows for a in interactions_of(plan, "transactions", r)])
    hop = plan.hops[0].key.key
    return {hop: mem.read(hop, rows[0]["household_id"], anchor)}


def test_recommend_equals_the_bundle_in_process_and_merges_session_events(recsys, stack, store, ranker):
    rows = history()
    store.append([a for r in rows[:-1] for a in interactions_of(recsys, "transactions", r)])  # last line not ingested yet
    session = [rows[-2], rows[-1], {**rows[-1]}]  # one already stored, one new, one redelivered
    cands = [300, 301, 302, 5, 17, 100, 250, 460, 499, 9999, 3] + list(range(20, 60))
    anchor = T0 - 5 * MIN
    with ServerThread(app_for(recsys, stack, store, ranker)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/recommend", headers=AUTH, json={"household_id": 7, "anchor_time": anchor, "k": 8,
                                                        "candidates": cands, "session_events": session})
        assert r.status_code == 200, r.text
        got = r.json()
        # the same with everything in Redis and no session events: identical answer
        store.append(interactions_of(recsys, "transactions", rows[-1]))
        again = c.post("/v1/recommend", headers=AUTH, json={"household_id": 7, "anchor_time": anchor, "k": 8,
                                                            "candidates": cands}).json()
        keep = c.post("/v1/recommend", headers=AUTH, json={"household_id": 7, "anchor_time": anchor, "k": 60,
                                                           "candidates": cands, "exclude_session_items": False}).json()
        spec = c.get("/openapi.json").json()
    assert got["model_name"] == RANKER and got["model_version"] == "1" and got["degraded"] == []
    assert got["session_items_excluded"] == 3 and got["candidates_scored"] == len(cands) - 3
    remaining = [p for p in cands if p not in (300, 301, 302)]
    scores, cold, cand_cold = reference_ranking(ranker, recsys, {"household_id": 7}, windows_of(recsys, rows, anchor),
                                                anchor, remaining)
    assert [i["product_id"] for i in got["items"]] == expected_top(scores, remaining, 8)
    by_id = dict(zip(remaining, scores.tolist()))
    for item in got["items"]:
        assert abs(item["score"] - by_id[item["product_id"]]) <= 1e-5
        assert item["cold_start"] == bool(cand_cold[remaining.index(item["product_id"])])
    assert [(i["product_id"], round(i["score"], 6)) for i in again["items"]] == \
           [(i["product_id"], round(i["score"], 6)) for i in got["items"]]
    assert len(keep["items"]) == len(cands) and keep["session_items_excluded"] == 0
    assert {i["product_id"] for i in keep["items"]} == set(cands)
    assert [i["product_id"] for i in keep["items"] if i["cold_start"]] == [9999]  # no embedding
    assert "/v1/recommend" in spec["paths"] and "/v1/score" in spec["paths"]


def test_catalog_top_n_and_concurrent_requests_share_triton_calls(recsys, stack, store, ranker):
    for h in range(1, 30):
        store.append([a for r in history(h) for a in interactions_of(recsys, "transactions", r)])
    app = app_for(recsys, stack, store, ranker)

    async def burst(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await asyncio.gather(*[c.post("/v1/recommend", headers=AUTH, json={
                "household_id": h, "anchor_time": T0, "candidates": {"from_catalog_top": 100}, "k": 5})
                for h in range(1, 30)])

    with ServerThread(app) as srv:
        answers = asyncio.run(burst(srv.url))
        metrics = app.state.deps.metrics
        calls = metrics.value("relstream_scorer_triton_calls_total", {"path": "recommend"})
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:2]
    for h, a in zip(range(1, 30), answers):
        body = a.json()
        assert len(body["items"]) == 5 and body["household_id"] == h
        # the open basket (300..302) is excluded from the catalog top-100 (products 1..100): nothing to drop
        assert body["candidates_scored"] == 100 and all(1 <= i["product_id"] <= 100 for i in body["items"])
    one = answers[3].json()
    scores, _, _ = reference_ranking(ranker, recsys, {"household_id": 4}, windows_of(recsys, history(4), T0), T0,
                                     list(range(1, 101)))
    assert [i["product_id"] for i in one["items"]] == expected_top(scores, list(range(1, 101)), 5)
    assert calls < len(answers), f"{calls} Triton calls for {len(answers)} concurrent requests: no micro-batching"
    assert metrics.value("relstream_scorer_scored_total", {"path": "recommend"}) == len(answers)


def test_validation_auth_and_default_anchor(recsys, stack, store, ranker):
    clock = [T0 + 3 * MIN]
    app = app_for(recsys, stack, store, ranker, now_ns=lambda: clock[0])
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        ok = c.post("/v1/recommend", headers=AUTH, json={"household_id": 77, "candidates": [1, 2, 3]})
        assert ok.status_code == 200 and ok.json()["anchor_time"] == clock[0]
        assert "embedding_missing:household_id" in ok.json()["degraded"]  # household 77 has no embedding
        assert c.post("/v1/recommend", json={"household_id": 7, "candidates": [1]}).status_code == 401
        bad = {"unknown": ({"household_id": 7, "candidates": [1], "extra": 1}, "extra"),
               "type": ({"household_id": 7.5, "candidates": [1]}, "household_id"),
               "too many": ({"household_id": 7, "candidates": list(range(1001))}, "candidates"),
               "k": ({"household_id": 7, "candidates": [1], "k": 0}, "k"),
               "session": ({"household_id": 7, "candidates": [1], "session_events": [{"product_id": 3}]},
                           "session_events[0].transaction_id")}
        for name, (body, field) in bad.items():
            r = c.post("/v1/recommend", headers=AUTH, json=body)
            assert r.status_code == 422 and r.json()["error"]["field"] == field, (name, r.text)
        json_type = {**AUTH, "Content-Type": "application/json"}
        assert c.post("/v1/recommend", headers=json_type, content=b"{").status_code == 400
        assert c.post("/v1/recommend", headers=AUTH, content=b"{}").status_code == 415  # JSON only
        dup = c.post("/v1/recommend", headers=json_type, content=b'{"household_id": 7, "household_id": 8}')
        assert dup.status_code == 400 and dup.json()["error"]["field"] == "household_id"


def test_redis_down_degrades_to_the_session_events_and_triton_down_is_503(recsys, stack, ranker):
    from relstream.stack import free_port
    dead = RedisWindowStore(recsys, f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.2)
    session = history()[-3:]
    cands = list(range(1, 41))
    with ServerThread(app_for(recsys, stack, dead, ranker)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/recommend", headers=AUTH, json={"household_id": 7, "anchor_time": T0, "k": 10,
                                                        "candidates": cands, "session_events": session})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "windows_unavailable" in body["degraded"]
    scores, _, _ = reference_ranking(ranker, recsys, {"household_id": 7}, windows_of(recsys, session, T0), T0, cands)
    assert [i["product_id"] for i in body["items"]] == expected_top(scores, cands, 10)

    app = app_for(recsys, stack, None, ranker, triton_url=f"127.0.0.1:{free_port()}")
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        down = c.post("/v1/recommend", headers=AUTH, json={"household_id": 7, "candidates": cands})
    assert down.status_code == 503 and down.json()["error"]["code"] == "triton_unavailable"
    assert down.headers.get("retry-after") == "1"


def test_relstream_serve_with_the_recsys_plan_finds_the_catalog(recsys, stack, store, ranker, tmp_path):
    """`relstream serve --plan recsys --model M`: /v1/recommend with the catalog of M's served
    version (found in the model repository, no catalog setting)."""
    import os
    import subprocess
    import sys
    import time

    from relstream.stack import free_port
    port = free_port()
    env = {**os.environ, "RELSTREAM__REDIS__URL": stack.redis_url, "RELSTREAM__RUN_DIR": str(tmp_path / "run"),
           "RELSTREAM__STACK__MODEL_REPOSITORY": str(stack.model_repository)}
    proc = subprocess.Popen([sys.executable, "-m", "relstream.cli", "serve", "--plan", "recsys", "--model", RANKER,
                             "--triton-grpc", stack.triton_grpc_url, "--port", str(port), "--no-auth"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not become ready"
                time.sleep(0.3)
            r = c.post("/v1/recommend", json={"household_id": 3, "anchor_time": T0,
                                              "candidates": {"from_catalog_top": 20}, "k": 3})
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert r.status_code == 200, (r.text, out[-2000:])
    body = r.json()
    assert len(body["items"]) == 3 and all(1 <= i["product_id"] <= 20 for i in body["items"])
    assert body["model_name"] == RANKER and body["candidates_scored"] == 20
