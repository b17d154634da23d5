"""The distilled ranker: features, per-request cost shape, padding, bundle round trip on real Triton."""
import numpy as np
import pytest
import torch

from offline.embeddings import EmbeddingTable, random_embeddings
from offline.distillation.shallow_model import (RankingConfig, RankingError, RankingModel, build_model,
                                                prepare_ranking_batch, serve)
from offline.export.bundle import load_bundle, request_error, split_scores
from offline.export import check_export, export_untrained, synthetic_requests
from offline.export.self_check import _curl_infer
from offline.tasks.ranking import InteractionIndex, RankingColumns, ranking_examples
from schemas.interactions import Window
from schemas.plan_loading import builtin_plan
from schemas.tensors import PAD_CANDIDATE, build_tensors, stack_requests, to_triton_json

T = 1_710_000_000_000_000_000
DAY = 86_400 * 10**9
HOUR = 3_600 * 10**9
COLS = RankingColumns("transactions", "transaction_timestamp", "household_id", "product_id", "basket_id")


@pytest.fixture(scope="module")
def plan():
    return builtin_plan("recsys")


@pytest.fixture(scope="module")
def table(plan):
    types, ids, snaps, vecs = random_embeddings(plan, {"households": np.arange(1, 101), "products": np.arange(1, 501)},
                                                [T - 3 * DAY], dim=16, seed=3)
    return EmbeddingTable.from_arrays(plan, types, ids, snaps, vecs)


@pytest.fixture(scope="module")
def model(plan):
    torch.set_num_threads(1)
    return build_model(plan, 16, seed=1)


def _window(plan, lines):
    """A window from (product, basket, seconds before T) triples, oldest first."""
    hop = plan.hops[0]
    lines = sorted(lines, key=lambda x: -x[2])
    cols = {"product_id": np.array([p for p, _, _ in lines], np.int64),
            "basket_id": np.array([b for _, b, _ in lines], np.int64),
            "quantity": np.ones(len(lines), np.int64), "sales_value": np.full(len(lines), 2.5, np.float32),
            "transaction_timestamp": np.array([T - s * 10**9 for _, _, s in lines], np.int64)}
    return {hop.key.key: Window(cols["transaction_timestamp"], {c: cols[c] for c in hop.columns})}


def test_layout_refuses_plans_the_ranker_cannot_read(plan):
    with pytest.raises(RankingError, match="ranking plan"):
        RankingModel(builtin_plan("fraud"), 16)
    with pytest.raises(RankingError, match="session_column|'visit_id'"):
        build_model(plan, 16, RankingConfig(session_column="visit_id"))


def test_session_pairwise_and_missing_features(plan, table, model):
    # Two lines of an open basket (seconds old), one line of an old basket (3 days), product 7 twice.
    wins = _window(plan, [(7, 1, 3 * 86_400), (7, 2, 20), (9, 2, 10)])
    req = build_tensors(plan, {"household_id": 5}, wins, anchor_time=T, candidates=[7, 9, 11, 99_999])
    batch = prepare_ranking_batch(plan, req, table, model.layout, model.config)
    assert batch["session"].tolist() == [[False, True, True]]
    pairs = batch["pairs"][0].numpy()
    assert pairs[:, 0].tolist() == pytest.approx(np.log1p([2, 1, 0, 0]).tolist())  # times in history
    assert pairs[:, 2].tolist() == [1, 1, 0, 0]  # in the open session
    assert pairs[2, 4] == 0 and pairs[0, 4] == pytest.approx(np.log1p(20 / 3600), rel=1e-4)  # hours since last
    assert batch["candidate_missing"].tolist() == [[0, 0, 0, 1]]  # 99,999 has no embedding
    # An old newest line opens no session.
    old = _window(plan, [(7, 1, 5 * 3_600)])
    req = build_tensors(plan, {"household_id": 5}, old, anchor_time=T, candidates=[7])
    assert not prepare_ranking_batch(plan, req, table, model.layout, model.config)["session"].any()


def test_padded_candidates_score_minus_inf_and_batching_changes_nothing(plan, table, model):
    reqs = synthetic_requests(plan, n=4, anchor_time=T, seq_lens=(5, 0, 30, 100), n_candidates=(10, 1, 100, 3))
    stacked = stack_requests(plan, reqs)
    out = serve(model, plan, stacked, table)
    scores, cold, cand_cold = out["score"], out["cold_start"], out["candidate_cold_start"]
    assert scores.shape == (4, 100) and cold.shape == (4, 2) and cand_cold.shape == (4, 100)
    pad = stacked[plan.candidate_tensor][..., 0] == PAD_CANDIDATE
    assert np.isneginf(scores[pad]).all() and np.isfinite(scores[~pad]).all()
    assert (cand_cold[pad] == 0).all()
    for i, r in enumerate(reqs):
        alone = serve(model, plan, r, table)["score"]
        n = alone.shape[1]
        assert np.abs(alone[0] - scores[i, :n]).max() <= 1e-5


def test_history_is_encoded_once_per_request_whatever_the_candidate_count(plan, table, model, monkeypatch):
    req = synthetic_requests(plan, n=3, anchor_time=T)[2]  # 30 history lines, 100 candidates
    cands = req[plan.candidate_tensor]
    one = dict(req, **{plan.candidate_tensor: cands[:, :1]})
    full = serve(model, plan, req, table)["score"]
    single = serve(model, plan, one, table)["score"]
    assert abs(float(single[0, 0]) - float(full[0, 0])) <= 1e-5  # candidates never interact
    seen = []
    orig = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda x, **kw: seen.append(tuple(x.shape)) or orig(x, **kw))
    serve(model, plan, req, table)
    assert seen == [(1, 31, model.config.d_model)]  # one pass over household + 30 lines, not 100


def test_request_errors_name_the_tensor(plan):
    req = synthetic_requests(plan, n=1, anchor_time=T)[0]
    assert request_error(plan, req) is None
    hop = plan.hops[0].key.key
    bad = dict(req, **{f"{hop}:basket_id": req[f"{hop}:basket_id"][:, :-1]})
    assert f"{hop}:basket_id" in request_error(plan, bad)
    none = dict(req, **{plan.candidate_tensor: np.zeros((1, 0, 1), np.int64)})
    assert "expected 1 to 1000 candidates" in request_error(plan, none)


def test_export_round_trip_on_real_triton(stack, plan, tmp_path):
    vdir = export_untrained(plan, stack.model_repository, model_name="ranker_check",
                                   snapshot_times=[T - 3 * DAY], seed=2)
    names = {p.name for p in vdir.iterdir()}
    assert {"model.py", "model.pt", "embeddings.parquet", "catalog.parquet", "plan.yaml", "manifest.json",
            "vendor"} <= names
    bundle = load_bundle(vdir)
    assert bundle.top_catalog(3).tolist() == [1, 2, 3]
    reqs = synthetic_requests(plan, n=5, anchor_time=T)
    report = check_export(vdir, stack.triton_http_url, stack.triton_grpc_url, reqs, latency_requests=10)
    assert report["latency"]["candidates"] == 100 and report["latency"]["triton_grpc_ms"]["n"] == 10
    assert report["ok"] and report["max_abs_diff_http"] <= 1e-5 and report["max_abs_diff_grpc"] <= 1e-5
    assert report["max_abs_diff_multi_row"] <= 1e-5 and report["padded_candidates_minus_inf"]
    assert "missing required input" in report["error_paths"]["missing_tensor"]["error"]
    assert "expects 'INT64'" in report["error_paths"]["wrong_dtype"]["error"]
    assert "transactions.product_id" in report["error_paths"]["no_candidates"]["error"]
    # Unknown household and one unknown candidate: flags per key and per candidate.
    req = dict(reqs[0])
    req["transactions.household_id"] = np.array([[10_000]], np.int64)
    req[plan.candidate_tensor] = np.array([[[1], [77_777]]], np.int64)
    code, body = _curl_infer(stack.triton_http_url, "ranker_check", to_triton_json(plan, req))
    assert code == 200, body
    outs = {o["name"]: o["data"] for o in body["outputs"]}
    assert outs["cold_start"] == [1, 1] and outs["candidate_cold_start"] == [0, 1]
    want = split_scores(bundle, [req])[0]["score"]
    assert np.abs(np.asarray(outs["score"]) - want[0]).max() <= 1e-5


# ----- training rows -----------------------------------------------------------------------------

def _toy_transactions(seed=0):
    """Two households, baskets every few days; lines of a basket at basket_time + i ns."""
    rng = np.random.default_rng(seed)
    rows, tid = [], 0
    for h in (1, 2):
        for b in range(12):
            bt = T - (40 - 3 * b) * DAY + h * HOUR
            for i, p in enumerate(rng.choice(np.arange(1, 60), rng.integers(2, 9), replace=False)):
                rows.append({"transaction_id": tid, "transaction_timestamp": bt + i, "household_id": h,
                             "product_id": int(p), "basket_id": h * 1000 + b, "quantity": int(rng.integers(1, 3)),
                             "sales_value": float(rng.uniform(1, 9))})
                tid += 1
    import pandas as pd
    return pd.DataFrame(rows).sort_values(["transaction_timestamp", "transaction_id"]).reset_index(drop=True)


def test_replayed_rows_are_build_tensors_of_the_past_only(plan):
    from offline.distillation.replay import replay_ranking_rows

    tx = _toy_transactions()
    examples = ranking_examples(tx, COLS, T - 20 * DAY, T + DAY)
    assert len(examples) >= 8

    def choose(i, ex, windows):
        cands = np.concatenate([ex["targets"], [500, 501]])
        return cands, np.r_[np.ones(len(ex["targets"])), 0, 0]

    rows = replay_ranking_rows(plan, tx, examples, choose, 20, progress=False)
    hop = plan.hops[0]
    for i, ex in examples.iterrows():
        A = int(ex["anchor_time"])
        past = tx[(tx["household_id"] == ex["household_id"]) & (tx["transaction_timestamp"] < A)
                  & (tx["transaction_timestamp"] >= A - plan.real_time_offset.ns)].tail(hop.max_len)
        window = Window(past["transaction_timestamp"].to_numpy(np.int64),
                        {c: past[c].to_numpy().astype(np.float32 if c == "sales_value" else np.int64)
                         for c in hop.columns})
        want = build_tensors(plan, {"household_id": int(ex["household_id"])}, {hop.key.key: window}, anchor_time=A,
                             candidates=list(choose(i, ex, None)[0]))
        got = rows.request(i)
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
            assert np.array_equal(got[name], want[name]), name
        # The open basket's revealed lines are in the history; none of its hidden lines is.
        times = got[f"{hop.key.key}:transaction_timestamp"].reshape(-1)
        baskets = got[f"{hop.key.key}:basket_id"].reshape(-1)
        assert (times < A).all() and (baskets == ex["basket_id"]).sum() == ex["revealed"]
        assert rows.labels[i, :len(ex["targets"])].all() and not rows.labels[i, len(ex["targets"]):].any()


def test_training_candidates_exclude_targets_and_revealed_and_are_seeded(plan):
    from offline.distillation.candidates import DailyPopularity, SamplingConfig, TrainingCandidates

    tx = _toy_transactions()
    examples = ranking_examples(tx, COLS, T - 20 * DAY, T + DAY)
    pop = DailyPopularity(InteractionIndex(tx, COLS), 50)
    choose = TrainingCandidates(pop, SamplingConfig(n_negatives=10, max_positives=3), plan.hops[0].key.key,
                                "product_id", seed=4)
    ex = examples.iloc[3]
    win = {plan.hops[0].key.key: Window(np.array([1], np.int64), {"product_id": np.array([7], np.int64)})}
    cands, labels = choose(3, ex, win)
    again, _ = choose(3, ex, win)
    assert np.array_equal(cands, again)  # seeded per example
    assert len(set(cands.tolist())) == len(cands) and labels.sum() == min(3, len(ex["targets"]))
    negatives = cands[labels == 0]
    assert not np.isin(negatives, ex["targets"]).any() and not np.isin(negatives, ex["revealed_items"]).any()
    # Popularity is read strictly before the example's day: a later line changes nothing.
    day = int(ex["anchor_time"]) // DAY * DAY
    ids, _ = pop.at(int(ex["anchor_time"]))
    assert np.array_equal(ids, InteractionIndex(tx[tx["transaction_timestamp"] < day], COLS).popular(day, 50)[0])


def test_sampled_softmax_loss_prefers_positives():
    from offline.distillation.trainer import ranking_loss

    labels = torch.tensor([[1.0, 0, 0, 0]])
    valid = torch.tensor([[True, True, True, False]])
    good = ranking_loss(torch.tensor([[3.0, 0, 0, float("-inf")]]), labels, valid)
    bad = ranking_loss(torch.tensor([[0.0, 3, 0, float("-inf")]]), labels, valid)
    assert torch.isfinite(good) and good < bad
    assert good.item() == pytest.approx(-np.log(np.exp(3) / (np.exp(3) + 2)), rel=1e-5)


def test_soft_target_loss_is_zero_when_the_ranker_agrees_with_the_deep_model():
    from offline.distillation.trainer import soft_target_loss

    deep = torch.tensor([[2.0, 1.0, 0.0, 5.0]])
    ok = torch.tensor([[True, True, True, False]])
    same = soft_target_loss(deep + 3.0, deep, ok)  # softmax is shift-invariant
    other = soft_target_loss(torch.tensor([[0.0, 1.0, 2.0, 0.0]]), deep, ok)
    assert abs(float(same)) < 1e-6 and float(other) > 0.1
    assert float(soft_target_loss(deep, deep, torch.tensor([[True, False, False, False]]))) == 0.0
