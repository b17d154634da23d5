"""Ranking plans: one request scores many candidates of one fact column (the recsys plan)."""
import copy

import numpy as np
import pytest
import yaml

from offline.export import render_config, synthetic_requests
from schemas.interactions import Interaction, Window, interactions_of
from schemas.plan import PlanError
from schemas.plan_loading import PLANS_DIR, builtin_plan, parse_plan
from schemas.tensors import (PAD_CANDIDATE, PAD_TIME, build_tensors, check_tensors, from_triton_json, stack_requests,
                             to_triton_json)
from schemas.values import RowError

PLAN = builtin_plan("recsys")
HOP = PLAN.hop_keys[0]
CAND = "transactions.product_id"
T0 = 1_500_000_000_000_000_000


@pytest.fixture()
def raw():
    return yaml.safe_load((PLANS_DIR / "recsys.yaml").read_text())


def line(i, household=7, product=100, t=T0 - 10**9, basket=1):
    return {"transaction_id": i, "transaction_timestamp": t, "household_id": household, "product_id": product,
            "basket_id": basket, "quantity": 1, "sales_value": 2.5}


def window(lines):
    return Window.from_interactions(PLAN, PLAN.hop(HOP), [interactions_of(PLAN, "transactions", r)[0][2] for r in lines])


def test_recsys_plan_names_the_candidate_tensor_and_per_candidate_outputs():
    spec = {t.name: t for t in PLAN.tensors}
    assert PLAN.is_ranking and PLAN.candidate_tensor == CAND and PLAN.max_candidates == 1000
    assert spec[CAND].kind == "candidate" and spec[CAND].dims == [-1, 1] and spec[CAND].ragged
    assert spec["transactions.household_id"].kind == "fact" and spec["transactions.household_id"].dims == [1]
    assert f"{HOP}:product_id" in spec and f"{HOP}:transaction_timestamp" in spec
    assert [(o.name, o.dims) for o in PLAN.outputs] == [("score", (-1,)), ("cold_start", (2,)),
                                                         ("candidate_cold_start", (-1,))]
    assert PLAN.embedding_entity_types == ("households", "products")


def test_scoring_plans_are_unchanged_by_ranking_support():
    fraud = builtin_plan("fraud")
    assert not fraud.is_ranking and fraud.candidate_tensor is None
    assert [o.name for o in fraud.outputs] == ["score", "cold_start"] and fraud.outputs[0].dims == (1,)
    assert all(t.kind in ("anchor", "fact", "rti") for t in fraud.tensors)
    # exported fraud models record this fingerprint: it must not move
    assert fraud.fingerprint() == "23870a4d151a10ae"


def test_round_trip_keeps_ranking_and_fingerprint():
    again = parse_plan(yaml.safe_load(PLAN.to_yaml()))
    assert again.fingerprint() == PLAN.fingerprint() and again.candidate_column == "product_id"
    other = copy.deepcopy(yaml.safe_load(PLAN.to_yaml()))
    other["ranking"]["max_candidates"] = 10
    assert parse_plan(other).fingerprint() != PLAN.fingerprint()


@pytest.mark.parametrize("mutate, field, words", [
    (lambda r: r["ranking"].update(candidate_column="nope"), "ranking.candidate_column", "unknown column"),
    (lambda r: (r["ranking"].update(candidate_column="basket_id"), r["fact_columns"].append("basket_id")),
     "ranking.candidate_column", "foreign key"),
    (lambda r: r["ranking"].update(candidate_column="household_id"), "ranking.candidate_column", "keys the real-time hop"),
    (lambda r: r["ranking"].update(max_candidates=0), "ranking.max_candidates", "integer in [1, 100000]"),
    (lambda r: r["ranking"].update(max_candidates=True), "ranking.max_candidates", "integer"),
    (lambda r: r["ranking"].pop("max_candidates"), "ranking.max_candidates", "missing"),
    (lambda r: r["ranking"].update(top_k=5), "ranking.top_k", "unknown field"),
    (lambda r: r.update(ranking=[1]), "ranking", "expected a mapping"),
    (lambda r: (r.update(fact_columns=["household_id"]), r["distillation"]["embedding_keys"].pop()),
     "ranking.candidate_column", "must be a fact column"),
])
def test_invalid_ranking_sections_are_refused_naming_the_field(raw, mutate, field, words):
    mutate(raw)
    with pytest.raises(PlanError) as err:
        parse_plan(raw)
    assert err.value.field == field and words in str(err.value)


def test_build_tensors_shares_fact_row_and_history_across_candidates():
    hist = window([line(1, product=5, t=T0 - 3 * 10**9), line(2, product=6, t=T0 - 10**9)])
    tensors = build_tensors(PLAN, {"household_id": 7}, {HOP: hist}, anchor_time=T0, candidates=[11, 12, 13])
    check_tensors(PLAN, tensors)
    assert tensors[CAND].shape == (1, 3, 1) and tensors[CAND].ravel().tolist() == [11, 12, 13]
    assert tensors["transactions.household_id"].tolist() == [[7]]
    assert tensors[f"{HOP}:product_id"].ravel().tolist() == [5, 6]
    # a fact row carrying a product_id is fine: the candidates, not the row, fill the tensor
    again = build_tensors(PLAN, {"household_id": 7, "product_id": 99}, {HOP: hist}, anchor_time=T0, candidates=[11])
    assert again[CAND].ravel().tolist() == [11]


@pytest.mark.parametrize("candidates, field, words", [
    (None, "candidates", "needs candidates"),
    ([], "candidates", "1 to 1000"),
    (list(range(1001)), "candidates", "1 to 1000"),
    ("123", "candidates", "expected a list"),
    ([1, "x"], "candidates[1]", "expected an integer"),
    ([1, None], "candidates[1]", "missing value"),
])
def test_bad_candidates_are_refused_naming_the_field(candidates, field, words):
    with pytest.raises(RowError) as err:
        build_tensors(PLAN, {"household_id": 7}, {HOP: window([])}, anchor_time=T0, candidates=candidates)
    assert err.value.field == field and words in str(err.value)


def test_scoring_plan_refuses_candidates():
    with pytest.raises(RowError, match="takes no candidates"):
        build_tensors(builtin_plan("fraud"), {}, {}, anchor_time=T0, candidates=[1])


def test_check_tensors_bounds_the_candidate_count_and_shape():
    good = build_tensors(PLAN, {"household_id": 7}, {HOP: window([])}, anchor_time=T0, candidates=[1, 2])
    for bad, words in ((np.zeros((1, 0, 1), np.int64), "1 to 1000"), (np.zeros((1, 1001, 1), np.int64), "1 to 1000"),
                       (np.zeros((1, 2), np.int64), "[1, n_candidates, 1]")):
        with pytest.raises(RowError, match=words.replace("[", r"\[")):
            check_tensors(PLAN, {**good, CAND: bad})


def test_stacked_ranking_requests_pad_candidates_and_history_with_markers():
    a = build_tensors(PLAN, {"household_id": 1}, {HOP: window([line(1, household=1)])}, anchor_time=T0,
                      candidates=[10, 11, 12])
    b = build_tensors(PLAN, {"household_id": 2}, {HOP: window([])}, anchor_time=T0, candidates=np.array([20]))
    batch = stack_requests(PLAN, [a, b])
    assert batch[CAND][:, :, 0].tolist() == [[10, 11, 12], [20, PAD_CANDIDATE, PAD_CANDIDATE]]
    assert batch[f"{HOP}:transaction_timestamp"][:, :, 0].tolist() == [[T0 - 10**9], [PAD_TIME]]


def test_seed_json_round_trip_and_export_config_for_ranking():
    tensors = build_tensors(PLAN, {"household_id": 7}, {HOP: window([line(1)])}, anchor_time=T0, candidates=[3, 4])
    back = from_triton_json(PLAN, to_triton_json(PLAN, tensors))
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)
    config = render_config(PLAN)
    cand_block = config.split(f'name: "{CAND}"')[1].split("}")[0]
    assert "dims: [ -1, 1 ]" in cand_block and "allow_ragged_batch: true" in cand_block
    score_block = config.split('name: "score"')[1].split("}")[0]
    assert "dims: [ -1 ]" in score_block and 'name: "candidate_cold_start"' in config
    for req in synthetic_requests(PLAN):
        check_tensors(PLAN, req)
