"""Lenient input the HTTP scorer used to accept (issue 21, part 2), against `relstream serve`'s app
on the real session stack: each case gets a clear 4xx naming the field, in plain words; valid
ISO-8601 timestamps still score like the integer nanoseconds they stand for. The server clock is
injected (ServeDeps.now_ns), so the plausibility window is tested without sleeping."""
from __future__ import annotations

import json
import os
import re
import subprocess

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relstream.demo.report import curl_command
from scorer.http_api import repeated_key
from tests.scorer.conftest import AUTH, BASE_T, SECOND, TOKEN, ServerThread, fact_row

pytestmark = pytest.mark.timeout(120)

NOW = BASE_T + 3_600 * SECOND  # the server clock the app sees: an hour after the rows' times
YEAR = 365 * 86_400 * SECOND
INTERNALS = re.compile(r"NoneType|object at 0x|<class |Traceback|\b(RowError|ValueError|TypeError|KeyError)\b|\bb'")
JSON = {**AUTH, "Content-Type": "application/json"}


def make_app(plan, stack, model_name, store, now_ns=lambda: NOW, **settings_):
    from scorer.http import ServeDeps, create_app
    from scorer.settings import ServeSettings
    from scorer.triton import AsyncTritonScorer
    s = ServeSettings(**{"window_deadline_ms": 2000, **settings_})
    triton = AsyncTritonScorer(plan, stack.triton_grpc_url, model_name, timeout_s=s.triton_timeout_s)
    deps = ServeDeps(plan=plan, triton=triton, store=store, settings=s, token=TOKEN, now_ns=now_ns,
                     store_ping=lambda: store.client.ping(), on_close=[triton.close])
    return create_app(deps)


@pytest.fixture
def server(plan, stack, test_model, window_store):
    with ServerThread(make_app(plan, stack, test_model, window_store)) as srv:
        yield srv


def post(srv, body, headers=JSON, path="/v1/score"):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    r = httpx.post(f"{srv.url}{path}", content=content, headers=headers, timeout=30)
    return r


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] and err["message"]
    assert not INTERNALS.search(err["message"]), err["message"]
    return err


def test_a_valid_row_still_scores(server):
    assert post(server, fact_row(1)).status_code == 200


def test_tx_datetime_in_seconds_is_refused(server):
    err = error_of(post(server, fact_row(1, t=(BASE_T + SECOND) // SECOND)), 422)
    assert err["field"] == "transactions.tx_datetime" and "looks like seconds" in err["message"]


@pytest.mark.parametrize("t", [0, -1, -BASE_T])
def test_tx_datetime_zero_or_negative_is_refused(server, t):
    err = error_of(post(server, fact_row(1, t=t)), 422)
    assert err["field"] == "transactions.tx_datetime" and "before the server clock" in err["message"]


def test_tx_datetime_ten_years_ahead_is_refused(server):
    err = error_of(post(server, fact_row(1, t=NOW + 10 * YEAR)), 422)
    assert err["field"] == "transactions.tx_datetime" and "after the server clock" in err["message"]


def test_anchor_time_in_seconds_is_refused(server):
    err = error_of(post(server, {**fact_row(1), "anchor_time": NOW // SECOND}), 422)
    assert err["field"] == "anchor_time"


def test_float_customer_id_is_refused(server):
    err = error_of(post(server, fact_row(1, customer=290.0)), 422)
    assert err["field"] == "transactions.customer_id" and "expected an integer" in err["message"]


@pytest.mark.parametrize("amount, words", [(-100, "below the minimum"), (3.4e38, "above the maximum")])
def test_amounts_outside_the_plan_constraint_are_refused(server, amount, words):
    err = error_of(post(server, fact_row(1, amount=amount)), 422)
    assert err["field"] == "transactions.tx_amount" and words in err["message"]


def test_text_plain_is_refused_with_415(server):
    err = error_of(post(server, fact_row(1), headers={**AUTH, "Content-Type": "text/plain"}), 415)
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]
    error_of(post(server, fact_row(1), headers=AUTH), 415)  # no Content-Type at all
    error_of(post(server, {"inputs": []}, headers={**AUTH, "Content-Type": "text/plain"}, path="/v1/infer"), 415)
    assert post(server, fact_row(1), headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_duplicate_json_keys_are_refused(server):
    row = fact_row(1)
    text = json.dumps(row)[:-1] + ', "customer_id": 8}'
    err = error_of(post(server, text), 400)
    assert err["code"] == "duplicate_key" and err["field"] == "customer_id" and "customer_id" in err["message"]
    err = error_of(post(server, '{"inputs": [], "inputs": []}', path="/v1/infer"), 400)
    assert err["field"] == "inputs"
    spaced = json.dumps(row, separators=(",", " : "))  # the exact re-parse path, no repeat: scored
    assert post(server, spaced).status_code == 200


def test_null_amount_is_named_null_not_missing(server):
    err = error_of(post(server, fact_row(1, amount=None)), 422)
    assert err["field"] == "transactions.tx_amount" and "null" in err["message"]
    assert "missing" not in err["message"]


def test_wrong_types_are_described_without_python_names(server):
    for value in ("a lot", [1], {"x": 1}, True):
        err = error_of(post(server, fact_row(1, amount=value)), 422)
        assert err["field"] == "transactions.tx_amount"
    err = error_of(post(server, [fact_row(1)]), 422)
    assert "a list" in err["message"]


def test_iso_timestamp_scores_like_the_integer_nanoseconds(server):
    import datetime as dt
    t = BASE_T + 7 * SECOND
    iso = dt.datetime.fromtimestamp(t // SECOND, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    a = post(server, fact_row(2, t=t))
    b = post(server, {**fact_row(2), "tx_datetime": iso})
    assert a.status_code == b.status_code == 200, b.text
    assert a.json()["score"] == pytest.approx(b.json()["score"], abs=1e-6)


def test_the_window_is_a_setting(plan, stack, test_model, window_store):
    app = make_app(plan, stack, test_model, window_store, timestamps={"max_past_days": 1, "max_future_hours": 0})
    with ServerThread(app) as srv:
        err = error_of(post(srv, fact_row(1, t=NOW - 2 * 86_400 * SECOND)), 422)
        assert "more than 1 day before" in err["message"]
        assert post(srv, fact_row(1, t=NOW - SECOND)).status_code == 200


def test_the_printed_curl_returns_200_through_bash(server):
    command = curl_command(f"{server.url}/v1/score", json.dumps(fact_row(3)))
    proc = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "RELSTREAM_API_TOKEN": TOKEN})
    body, _, code = proc.stdout.rpartition("\n")
    assert code == "200", proc.stdout + proc.stderr
    assert json.loads(body)["event_id"] == "3"


# ----- the repeated-key check (no server needed) --------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(obj=st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_bodies_without_repeats_pass_and_a_repeat_is_found(obj):
    raw = orjson.dumps(obj)
    assert repeated_key(raw, orjson.loads(raw)) is None
    assert repeated_key(json.dumps(obj, indent=1).encode(), obj) is None  # spacing does not matter
    if obj:
        key = next(iter(obj))
        twice = raw[:-1] + b"," + orjson.dumps({key: 1})[1:]
        assert repeated_key(twice, orjson.loads(twice)) == key
        spaced = json.dumps(obj, separators=(",", " : ")).encode()  # whitespace before the colon
        twice = spaced[:-1] + b"," + json.dumps({key: 1}, separators=(",", "\n:")).encode()[1:]
        assert repeated_key(twice, orjson.loads(twice)) == key


@pytest.mark.parametrize("raw, key", [(b'{"a" : 1, "a": 2}', "a"), (b'{"a":1,"b":{"c" :2,"c":3}}', "c"),
                                      (b'{"a": "x\\":", "b": 1}', None), (b'[{"a": 1}, {"a": 2}]', None)])
def test_repeated_keys_are_found_whatever_the_spacing(raw, key):
    assert repeated_key(raw, orjson.loads(raw)) == key


def test_recommend_requests_follow_the_same_rules():
    import numpy as np

    from schemas.plan_loading import builtin_plan
    from schemas.values import RowError
    from scorer.recommend import RecommendSettings, parse_request
    from scorer.settings import TimestampWindowSettings

    recsys = builtin_plan("recsys")
    window = TimestampWindowSettings().window()

    def parse(body):
        return parse_request(recsys, body, now_ns=lambda: NOW, catalog=np.arange(10, dtype=np.int64),
                             settings=RecommendSettings(), window=window)

    line = {"transaction_id": 1, "transaction_timestamp": NOW - SECOND, "household_id": 7, "product_id": 3,
            "basket_id": 9, "quantity": 1, "sales_value": 2.5}
    ok = parse({"household_id": 7, "candidates": [1, 2], "anchor_time": NOW, "session_events": [line]})
    assert ok.anchor_time == NOW and len(ok.session) == 1
    iso = parse({"household_id": 7, "candidates": [1], "session_events": [
        {**line, "transaction_timestamp": "2023-11-14T23:13:19Z"}]})
    assert iso.session[0][2].event_time == NOW - SECOND  # ISO-8601 and integer ns name the same instant
    for body, field in [({"household_id": 7.0, "candidates": [1]}, "household_id"),
                        ({"household_id": None, "candidates": [1]}, "household_id"),
                        ({"household_id": 7, "candidates": [1], "anchor_time": NOW // SECOND}, "anchor_time"),
                        ({"household_id": 7, "candidates": [1], "anchor_time": NOW + 10 * YEAR}, "anchor_time"),
                        ({"household_id": 7, "candidates": [1, 2.0]}, "candidates[1]"),
                        ({"household_id": 7, "candidates": [1], "session_events": [{**line, "product_id": 3.0}]},
                         "session_events[0].product_id"),
                        ({"household_id": 7, "candidates": [1], "session_events": [
                            {**line, "transaction_timestamp": NOW // SECOND}]}, "session_events[0].transaction_timestamp"),
                        ({"household_id": 7, "candidates": [1], "session_events": [{**line, "quantity": None}]},
                         "session_events[0].quantity")]:
        with pytest.raises(RowError) as err:
            parse(body)
        assert err.value.field == field and not INTERNALS.search(str(err.value))
