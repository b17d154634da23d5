"""Label feedback in the plan and the tensor builder: validation naming the field, the tensors it
adds, the known-time rule (``T - h <= known < T``) and the default known time (fact time + delay)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from schemas.interactions import Window, interactions_of, window_keys, with_known_time
from schemas.plan import PlanError
from schemas.plan_loading import builtin_plan, parse_plan
from schemas.tensors import build_tensors, label_stats
from schemas.values import RowError

DAY = 86_400 * 10**9
FL = builtin_plan("fraud_labels")
FRAUD = builtin_plan("fraud")
CUST, TERM = (h.key.key for h in FL.label_hops)


def raw_plan() -> dict:
    return copy.deepcopy(FL.to_dict())


def test_the_label_plan_adds_label_tensors_and_keeps_the_fraud_inputs():
    assert FL.tensor_names[:len(FRAUD.tensor_names)] == FRAUD.tensor_names
    extra = FL.tensor_names[len(FRAUD.tensor_names):]
    assert extra[:3] == ("label:transactions.customer_id:1d:count", "label:transactions.customer_id:1d:positives",
                         "label:transactions.customer_id:1d:rate")
    assert len(extra) == 2 * 3 * 3  # keys x horizons x stats
    assert {t.kind for t in FL.tensors if t.name in extra} == {"label"}
    assert FL.lookback_ns == 30 * DAY and FRAUD.lookback_ns == 7 * DAY
    assert FL.window_bounds(TERM, 100 * DAY) == (70 * DAY, 100 * DAY)
    assert FL.window_bounds(FL.hop_keys[0], 100 * DAY) == FL.rti_bounds(100 * DAY)
    assert parse_plan(FL.to_dict()).fingerprint() == FL.fingerprint() != FRAUD.fingerprint()
    assert "label_feedback" not in FRAUD.to_dict() and FRAUD.label_hops == () and FRAUD.stored_hops == FRAUD.hops


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["label_feedback"].pop("delay"), "label_feedback.delay"),
    (lambda r: r["label_feedback"].update(table="nope"), "label_feedback.table"),
    (lambda r: r["label_feedback"].update(table="transactions"), "label_feedback.table"),
    (lambda r: r["label_feedback"].update(label="customer_id2"), "label_feedback.label"),
    (lambda r: r["label_feedback"].update(bogus=1), "label_feedback.bogus"),
    (lambda r: r["label_feedback"].update(horizons=[]), "label_feedback.horizons"),
    (lambda r: r["label_feedback"].update(horizons=[{"value": 0, "unit": "days"}]), "label_feedback.horizons[0]"),
    (lambda r: r["label_feedback"].update(horizons=[{"value": 1, "unit": "days"}, {"value": 24, "unit": "hours"}]),
     "label_feedback.horizons[1]"),
    (lambda r: r["label_feedback"].update(delay={"value": -1, "unit": "days"}), "label_feedback.delay.value"),
    (lambda r: r["label_feedback"].update(keys={}), "label_feedback.keys"),
    (lambda r: r["label_feedback"].update(
        keys={"transactions.terminal_id->terminals.terminal_id->transactions.terminal_id": 5}),
     "label_feedback.keys['transactions.terminal_id->terminals.terminal_id->transactions.terminal_id'] (segment 3)"),
    (lambda r: r["label_feedback"].update(
        keys={"transactions.terminal_id->terminals.terminal_id->transaction_labels.terminal_id": 0}),
     "label_feedback.keys['transactions.terminal_id->terminals.terminal_id->transaction_labels.terminal_id']"),
    (lambda r: r["tables"]["transaction_labels"]["columns"].update(tx_fraud="string"),
     "tables.transaction_labels.columns.tx_fraud"),
    (lambda r: r["tables"]["transaction_labels"]["columns"].update(extra="int64"),
     "tables.transaction_labels.columns.extra"),
    (lambda r: r["tables"]["transaction_labels"].update(primary_key="customer_id"),
     "tables.transaction_labels.primary_key"),
    (lambda r: r["tables"]["transaction_labels"]["columns"].pop("tx_datetime"), "tables.transaction_labels.columns"),
])
def test_invalid_label_feedback_is_refused_naming_the_field(edit, field):
    raw = raw_plan()
    edit(raw)
    with pytest.raises(PlanError) as err:
        parse_plan(raw)
    assert err.value.field == field, str(err.value)


def test_the_label_is_never_a_fact_input():
    raw = raw_plan()
    raw.pop("label")
    raw["fact_columns"] = list(FRAUD.fact_columns) + ["tx_fraud"]
    with pytest.raises(PlanError, match="^label_feedback.label: .*a label never is"):
        parse_plan(raw)


def label(tx: int, t: int, fraud: int, known: int | None = None, customer: int = 1, terminal: int = 2) -> dict:
    return {"transaction_id": tx, "tx_datetime": t, "customer_id": customer, "terminal_id": terminal,
            "tx_fraud": fraud, "label_known_at": known}


def test_a_label_without_known_time_is_known_at_fact_time_plus_delay():
    assert with_known_time(FL, label(1, 3 * DAY, 1))["label_known_at"] == 10 * DAY
    assert with_known_time(FL, label(1, 3 * DAY, 1, known=4 * DAY))["label_known_at"] == 4 * DAY
    appends = interactions_of(FL, "transaction_labels", label(1, 3 * DAY, 1))
    assert [(h, e, a.event_time, a.event_id, dict(a.values)) for h, e, a in appends] == [
        (CUST, 1, 10 * DAY, 1, {"tx_fraud": 1, "label_known_at": 10 * DAY}),
        (TERM, 2, 10 * DAY, 1, {"tx_fraud": 1, "label_known_at": 10 * DAY})]
    no_time = label(1, 3 * DAY, 1)
    del no_time["tx_datetime"]
    with pytest.raises(RowError, match="^transaction_labels.tx_datetime: missing field"):
        interactions_of(FL, "transaction_labels", no_time)


def window(known: list[int], labels: list[int]) -> Window:
    return Window(np.asarray(known, np.int64), {"tx_fraud": np.asarray(labels, np.int64),
                                                "label_known_at": np.asarray(known, np.int64)})


def test_horizon_edges_known_at_t_is_not_counted_known_at_t_minus_h_is():
    T = 100 * DAY
    w = window([T - 30 * DAY - 1, T - 30 * DAY, T - 7 * DAY, T - DAY - 1, T - DAY, T - 1, T], [1, 1, 0, 1, 1, 0, 1])
    s = label_stats(FL, w, T)
    assert (s[(DAY, "count")], s[(DAY, "positives")], s[(DAY, "rate")]) == (2.0, 1.0, 0.5)  # T - 1d, T - 1
    assert (s[(7 * DAY, "count")], s[(7 * DAY, "positives")]) == (4.0, 2.0)
    assert (s[(30 * DAY, "count")], s[(30 * DAY, "positives")]) == (5.0, 3.0)
    empty = label_stats(FL, window([], []), T)
    assert empty[(DAY, "rate")] == 0.0 and empty[(30 * DAY, "count")] == 0.0


def test_build_tensors_reads_label_windows_by_their_keys():
    T = 100 * DAY
    fact = {"transaction_id": 9, "tx_datetime": T, "customer_id": 1, "terminal_id": 2, "tx_amount": 5.0}
    keys = window_keys(FL, fact)
    assert [k for k, _ in keys] == [*FL.hop_keys, CUST, TERM]
    wins = {h.key.key: Window.empty(FL, h) for h in FL.hops}
    wins[CUST] = window([T - 2 * DAY], [1])
    wins[TERM] = window([T - DAY, T - 3 * DAY], [0, 1])
    out = build_tensors(FL, fact, wins)
    assert set(out) == set(FL.tensor_names)
    assert out["label:transactions.customer_id:1d:count"].tolist() == [[0.0]]
    assert out["label:transactions.customer_id:7d:positives"].tolist() == [[1.0]]
    assert out["label:transactions.terminal_id:7d:rate"].tolist() == [[0.5]]
    assert out["label:transactions.terminal_id:1d:count"].dtype == np.float32
    with pytest.raises(RowError, match="no window given for this label key"):
        build_tensors(FL, fact, {h.key.key: Window.empty(FL, h) for h in FL.hops})
