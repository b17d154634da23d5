"""Session order of Complete Journey and the in-session ranking task: leakage and baselines."""
import numpy as np
import pandas as pd
import pytest

from offline.datasets.base import NS_PER_DAY
from offline.datasets.complete_journey import load_complete_journey, session_order
from offline.recsys_tasks import (EXAMPLE_COLUMNS, PurchaseIndex, RecsysTaskError, buy_again_scores,
                                  popular_products, ranking_examples)

T0 = 1_700_000_000 * 10**9


def _tx(lines):
    """lines: (basket_time_offset_s, household, basket, product); session times like the loader."""
    df = pd.DataFrame(lines, columns=["sec", "household_id", "basket_id", "product_id"])
    bt = T0 + df["sec"].to_numpy(np.int64) * 10**9
    order, line_time = session_order(bt, df["household_id"].to_numpy(), df["basket_id"].to_numpy(), seed=0)
    df["transaction_timestamp"] = line_time
    return df.iloc[order].reset_index(drop=True)


def test_session_order_rule():
    bt = np.array([5, 5, 5, 9, 9, 5, 5], np.int64) * 10**9
    hh = np.array([1, 1, 1, 1, 1, 1, 2])
    basket = np.array([10, 10, 10, 11, 11, 12, 13])  # baskets 10 and 12: same household, same time
    order, t = session_order(bt, hh, basket, seed=3)
    assert sorted(order) == list(range(7)) and np.all(np.diff(t[order]) >= 0)
    assert len(set(t[hh == 1])) == 6  # a household's lines have distinct times
    # basket 10 (first by basket id) takes offsets 0..2, basket 12 continues at 3
    assert sorted(t[basket == 10] - 5 * 10**9) == [0, 1, 2] and list(t[basket == 12] - 5 * 10**9) == [3]
    assert sorted(t[basket == 11] - 9 * 10**9) == [0, 1] and list(t[basket == 13]) == [5 * 10**9]
    # seeded: same seed same permutation, another seed (eventually) another one
    big_bt, big_b = np.zeros(50, np.int64), np.zeros(50, np.int64)
    a = session_order(big_bt, big_b, big_b, seed=0)[1]
    assert np.array_equal(a, session_order(big_bt, big_b, big_b, seed=0)[1])
    assert not np.array_equal(a, session_order(big_bt, big_b, big_b, seed=1)[1])


def test_loader_session_order_on_real_subset():
    tx = load_complete_journey(max_rows=20_000).table("transactions")
    assert tx["transaction_timestamp"].is_monotonic_increasing
    assert not tx.duplicated(["household_id", "transaction_timestamp"]).any()
    span = tx.groupby("basket_id")["transaction_timestamp"].agg(["min", "max", "size"])
    span = span[span["size"] < span["size"].max()]  # a basket cut by max_rows may be partial
    assert ((span["max"] - span["min"]) >= span["size"] - 1).all()
    assert ((span["max"] - span["min"]) < 1000).all()  # shifts stay below 1 us


@pytest.fixture()
def small_tx():
    return _tx([
        (0, 1, 100, 7), (0, 1, 100, 8),  # household 1, an earlier basket
        (3600, 1, 101, 1), (3600, 1, 101, 2), (3600, 1, 101, 3), (3600, 1, 101, 7),  # 4 lines
        (7200, 2, 200, 1),  # one-line basket: no example
        (7200, 2, 201, 5), (7200, 2, 201, 6), (7200, 2, 201, 1),
        (10 * 86400, 3, 300, 9), (10 * 86400, 3, 300, 1),  # outside the window below
    ])


def test_ranking_examples_leakage_and_targets(small_tx):
    ex = ranking_examples(small_tx, T0, T0 + 86400 * 10**9)
    assert tuple(ex.columns) == EXAMPLE_COLUMNS
    assert set(ex["basket_id"]) == {100, 101, 201}  # 1-line basket and out-of-window basket excluded
    assert ex["anchor_time"].is_monotonic_increasing
    for row in ex.itertuples():
        lines = small_tx[small_tx["basket_id"] == row.basket_id]
        visible = lines[lines["transaction_timestamp"] < row.anchor_time]
        hidden = lines[lines["transaction_timestamp"] >= row.anchor_time]
        assert len(visible) == row.revealed == max(1, row.n_lines // 2)  # reveal point: half, >= 1
        assert set(row.revealed_products) == set(visible["product_id"])
        assert set(row.targets) == set(hidden["product_id"]) - set(visible["product_id"])
        assert not set(row.targets) & set(row.revealed_products)
        assert row.anchor_time == hidden["transaction_timestamp"].min()  # time of the first hidden line
        # the household's whole visible past is strictly older than the anchor
        past = small_tx[(small_tx["household_id"] == row.household_id)
                        & (small_tx["transaction_timestamp"] < row.anchor_time)]
        assert (past["transaction_timestamp"] < row.anchor_time).all()
        assert set(visible.index) <= set(past.index)


def test_ranking_examples_options(small_tx):
    every = ranking_examples(small_tx, T0, T0 + 86400 * 10**9, reveal=1)
    assert (every["revealed"] == 1).all()
    assert list(ranking_examples(small_tx, T0, T0 + 86400 * 10**9, min_lines=4)["basket_id"]) == [101]
    a = ranking_examples(small_tx, 0, 2**62, max_examples=2, seed=5)
    assert len(a) == 2 and a.equals(ranking_examples(small_tx, 0, 2**62, max_examples=2, seed=5))
    assert ranking_examples(small_tx, T0 + 1, T0 + 2).empty
    with pytest.raises(RecsysTaskError, match="basket_id"):
        ranking_examples(small_tx.drop(columns=["basket_id"]), 0, 2**62)
    with pytest.raises(RecsysTaskError, match="reveal"):
        ranking_examples(small_tx, 0, 2**62, reveal=1.5)


def test_popular_products_strictly_before_t():
    day = NS_PER_DAY
    tx = pd.DataFrame({
        "transaction_timestamp": [T0 - 30 * day, T0 - 2 * day, T0 - day, T0 - 1, T0, T0 + 1, T0 - day],
        "household_id": [1] * 7,
        "product_id": [5, 6, 6, 7, 8, 8, 7],
    })
    # product 5 is outside the 28-day window; 8 is at/after t; 6 and 7 tie (2 lines): by id
    assert list(popular_products(tx, T0, 10)) == [6, 7]
    assert list(popular_products(tx, T0, 1)) == [6]
    assert list(popular_products(tx, T0 + 1, 10)) == [6, 7, 8]  # 8 once (at T0), T0 + 1 excluded
    assert list(popular_products(tx, T0 + 2, 3)) == [6, 7, 8]  # three-way tie: by id
    assert list(popular_products(tx, T0, 10, days=31)) == [6, 7, 5]
    with pytest.raises(RecsysTaskError, match="product_id"):
        popular_products(tx.drop(columns=["product_id"]), T0, 3)


def test_buy_again_counts_history_and_session_but_not_the_anchor(small_tx):
    ex = ranking_examples(small_tx, T0, T0 + 86400 * 10**9)
    row = ex[ex["basket_id"] == 101].iloc[0]
    index = PurchaseIndex(small_tx)
    cands, counts = index.popular(row.anchor_time, 100)
    s = buy_again_scores(index, int(row.household_id), int(row.anchor_time), cands, counts)
    own = dict(zip(cands, np.floor(s).astype(int)))
    expected = {7: 1, 8: 1}  # basket 100
    for p in row.revealed_products:  # revealed session lines count
        expected[int(p)] = expected.get(int(p), 0) + 1
    assert {p: c for p, c in own.items() if c} == expected
    assert not any(own.get(int(p), 0) for p in row.targets if int(p) not in expected)  # hidden lines invisible
    assert np.all(s - np.floor(s) < 1)  # popularity only breaks ties
    # the plan's window: only lines in [T - window, T), newest max_lines
    ids, counts = index.household_counts(int(row.household_id), int(row.anchor_time), window_ns=1800 * 10**9)
    assert set(ids) == {int(p) for p in row.revealed_products}  # basket 100 is an hour older
    ids, counts = index.household_counts(int(row.household_id), int(row.anchor_time), max_lines=1)
    assert len(ids) == 1 and counts.sum() == 1


def test_inbatch_softmax_loss_masks_other_snapshots_and_repeated_products():
    import torch

    from offline.train_recsys import inbatch_softmax_loss

    torch.manual_seed(0)
    eh, ep, bias = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3)
    pop = {1: np.array([1.0] * 5 + [4.0, 2.0, 3.0]), 2: np.ones(8)}
    # product 5 twice at snapshot 1 (not a negative of itself), row 2 alone at snapshot 2: nothing to rank
    alone = inbatch_softmax_loss(eh, ep, bias, np.array([1, 1, 2]), np.array([5, 5, 6]), pop)
    assert float(alone) == pytest.approx(0.0, abs=1e-6)
    shared = inbatch_softmax_loss(eh, ep, bias, np.array([1, 1, 1]), np.array([5, 6, 7]), pop)
    assert float(shared) > 0
    # by hand: logits e_h . e_p / sqrt(d) + b_p - log q(p), softmax cross-entropy on the diagonal
    q = pop[1][[5, 6, 7]] / pop[1].sum()
    logits = (eh @ ep.T / 8 ** 0.5 + bias[None, :]).numpy() - np.log(q)[None, :]
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert float(shared) == pytest.approx(-np.mean(np.diag(logp)), rel=1e-5)
