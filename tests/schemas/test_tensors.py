import numpy as np
import pytest

from schemas.interactions import Window, interactions_of, window_keys
from schemas.plan_loading import builtin_plan
from schemas.tensors import build_tensors, check_tensors, from_triton_json, to_triton_json
from schemas.values import RowError, to_ns

PLAN = builtin_plan("fraud")
HOP_C, HOP_T = PLAN.hop_keys
T0 = to_ns("2018-04-10T12:00:00")


def row(i=1001, customer=42, terminal=7, t=T0, amount=29.99):
    return {"transaction_id": i, "tx_datetime": t, "customer_id": customer, "terminal_id": terminal,
            "tx_amount": amount, "tx_fraud": 0}


def test_a_transaction_feeds_both_hops():
    appends = interactions_of(PLAN, "transactions", row())
    assert [(h, e) for h, e, _ in appends] == [(HOP_C, 42), (HOP_T, 7)]
    _, _, inter = appends[0]
    assert inter.event_id == 1001 and inter.event_time == T0
    assert set(inter.values) == {"tx_datetime", "terminal_id", "tx_amount"}


def test_build_tensors_has_the_seed_shapes_and_no_padding():
    hist = [interactions_of(PLAN, "transactions", row(i, t=T0 - k * 10**9))[0][2] for k, i in enumerate([5, 6, 7])]
    windows = {HOP_C: Window.from_interactions(PLAN, PLAN.hop(HOP_C), hist[::-1]),
               HOP_T: Window.empty(PLAN, PLAN.hop(HOP_T))}
    tensors = build_tensors(PLAN, row(), windows)
    check_tensors(PLAN, tensors)
    assert tensors["anchor_time"].shape == (1, 1) and tensors["anchor_time"][0, 0] == T0
    assert tensors["transactions.tx_amount"].dtype == np.float32
    assert tensors[f"{HOP_C}:tx_amount"].shape == (1, 3, 1)
    assert tensors[f"{HOP_T}:tx_amount"].shape == (1, 0, 1)
    assert window_keys(PLAN, row()) == [(HOP_C, 42), (HOP_T, 7)]


def test_json_round_trip_matches_the_seed_request_shape():
    windows = {h: Window.empty(PLAN, PLAN.hop(h)) for h in PLAN.hop_keys}
    tensors = build_tensors(PLAN, row(), windows)
    body = to_triton_json(PLAN, tensors)
    assert body["inputs"][0] == {"name": "anchor_time", "datatype": "INT64", "shape": [1, 1], "data": [T0]}
    back = from_triton_json(PLAN, body)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(back[name], arr)


@pytest.mark.parametrize("bad,field", [
    ({"customer_id": "abc"}, "transactions.customer_id"),
    ({"tx_amount": None}, "transactions.tx_amount"),
    ({"tx_amount": float("nan")}, "transactions.tx_amount"),
    ({"tx_datetime": "yesterday"}, "transactions.tx_datetime"),
    ({"terminal_id": True}, "transactions.terminal_id"),
])
def test_bad_rows_are_rejected_naming_the_field(bad, field):
    r = row()
    r.update(bad)
    windows = {h: Window.empty(PLAN, PLAN.hop(h)) for h in PLAN.hop_keys}
    with pytest.raises(RowError) as err:
        build_tensors(PLAN, r, windows, anchor_time=T0)
    assert err.value.field == field


def test_missing_tensor_and_wrong_dtype_in_json_are_named():
    windows = {h: Window.empty(PLAN, PLAN.hop(h)) for h in PLAN.hop_keys}
    body = to_triton_json(PLAN, build_tensors(PLAN, row(), windows))
    body["inputs"] = body["inputs"][1:]
    with pytest.raises(RowError, match="anchor_time"):
        from_triton_json(PLAN, body)
    body = to_triton_json(PLAN, build_tensors(PLAN, row(), windows))
    body["inputs"][5]["datatype"] = "INT64"
    with pytest.raises(RowError, match="transactions.tx_amount"):
        from_triton_json(PLAN, body)


def test_stack_requests_pads_with_the_time_sentinel():
    from schemas.tensors import PAD_TIME, stack_requests
    hist = [interactions_of(PLAN, "transactions", row(i, t=T0 - k * 10**9))[0][2] for k, i in enumerate([5, 6])]
    w2 = {HOP_C: Window.from_interactions(PLAN, PLAN.hop(HOP_C), hist[::-1]), HOP_T: Window.empty(PLAN, PLAN.hop(HOP_T))}
    w0 = {h: Window.empty(PLAN, PLAN.hop(h)) for h in PLAN.hop_keys}
    batch = stack_requests(PLAN, [build_tensors(PLAN, row(), w0), build_tensors(PLAN, row(2), w2)])
    assert batch["anchor_time"].shape == (2, 1)
    t = batch[f"{HOP_C}:tx_datetime"]
    assert t.shape == (2, 2, 1)
    assert (t[0, :, 0] == PAD_TIME).all() and (t[1, :, 0] != PAD_TIME).all()
    assert batch[f"{HOP_T}:tx_amount"].shape == (2, 0, 1)
