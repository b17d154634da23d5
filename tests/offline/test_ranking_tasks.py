"""Session order of Complete Journey and the generic in-session ranking task: leakage, candidate
sources, baselines and metrics."""
import numpy as np
import pandas as pd
import pytest

from offline.datasets.base import NS_PER_DAY
from offline.datasets.complete_journey import load_complete_journey, session_order
from offline.data.spec import SpecError, parse_project
from offline.tasks.ranking import (CoOccurrence, InteractionIndex, RankingColumns, RankingTaskError, buy_again_scores,
                                   ranking_examples, ranking_metrics)

T0 = 1_700_000_000 * 10**9
COLS = RankingColumns("transactions", "transaction_timestamp", "household_id", "product_id", "basket_id")


def popular_products(tx, t, n, days=28):
    return InteractionIndex(tx, COLS).popular(t, n, days)[0]


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
    ex = ranking_examples(small_tx, COLS, T0, T0 + 86400 * 10**9)
    assert tuple(ex.columns) == ("household_id", "basket_id", "anchor_time", "session_time", "n_rows", "revealed",
                                 "revealed_items", "targets")
    assert set(ex["basket_id"]) == {100, 101, 201}  # 1-line basket and out-of-window basket excluded
    assert ex["anchor_time"].is_monotonic_increasing
    for row in ex.itertuples():
        lines = small_tx[small_tx["basket_id"] == row.basket_id]
        visible = lines[lines["transaction_timestamp"] < row.anchor_time]
        hidden = lines[lines["transaction_timestamp"] >= row.anchor_time]
        assert len(visible) == row.revealed == max(1, row.n_rows // 2)  # reveal point: half, >= 1
        assert set(row.revealed_items) == set(visible["product_id"])
        assert set(row.targets) == set(hidden["product_id"]) - set(visible["product_id"])
        assert not set(row.targets) & set(row.revealed_items)
        assert row.anchor_time == hidden["transaction_timestamp"].min()  # time of the first hidden line
        # the household's whole visible past is strictly older than the anchor
        past = small_tx[(small_tx["household_id"] == row.household_id)
                        & (small_tx["transaction_timestamp"] < row.anchor_time)]
        assert (past["transaction_timestamp"] < row.anchor_time).all()
        assert set(visible.index) <= set(past.index)


def test_ranking_examples_options(small_tx):
    every = ranking_examples(small_tx, COLS, T0, T0 + 86400 * 10**9, reveal=1)
    assert (every["revealed"] == 1).all()
    assert list(ranking_examples(small_tx, COLS, T0, T0 + 86400 * 10**9, min_rows=4)["basket_id"]) == [101]
    a = ranking_examples(small_tx, COLS, 0, 2**62, max_examples=2, seed=5)
    assert len(a) == 2 and a.equals(ranking_examples(small_tx, COLS, 0, 2**62, max_examples=2, seed=5))
    assert ranking_examples(small_tx, COLS, T0 + 1, T0 + 2).empty
    with pytest.raises(RankingTaskError, match="basket_id"):
        ranking_examples(small_tx.drop(columns=["basket_id"]), COLS, 0, 2**62)
    with pytest.raises(RankingTaskError, match="reveal"):
        ranking_examples(small_tx, COLS, 0, 2**62, reveal=1.5)
    # other column names, same examples: nothing depends on the names
    names = {"transaction_timestamp": "t", "household_id": "user", "product_id": "song", "basket_id": "visit"}
    other = ranking_examples(small_tx.rename(columns=names), RankingColumns("plays", *names.values()), 0, 2**62)
    assert np.array_equal(other["user"], ranking_examples(small_tx, COLS, 0, 2**62)["household_id"])


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
    with pytest.raises(RankingTaskError, match="product_id"):
        popular_products(tx.drop(columns=["product_id"]), T0, 3)
    with pytest.raises(RankingTaskError, match="n: must be >= 1"):
        popular_products(tx, T0, 0)


def test_buy_again_counts_history_and_session_but_not_the_anchor(small_tx):
    ex = ranking_examples(small_tx, COLS, T0, T0 + 86400 * 10**9)
    row = ex[ex["basket_id"] == 101].iloc[0]
    index = InteractionIndex(small_tx, COLS)
    cands, counts = index.popular(row.anchor_time, 100)
    s = buy_again_scores(index, int(row.household_id), int(row.anchor_time), cands, counts)
    own = dict(zip(cands, np.floor(s).astype(int)))
    expected = {7: 1, 8: 1}  # basket 100
    for p in row.revealed_items:  # revealed session lines count
        expected[int(p)] = expected.get(int(p), 0) + 1
    assert {p: c for p, c in own.items() if c} == expected
    assert not any(own.get(int(p), 0) for p in row.targets if int(p) not in expected)  # hidden lines invisible
    assert np.all(s - np.floor(s) < 1)  # popularity only breaks ties
    # the plan's window: only lines in [T - window, T), newest max_lines
    ids, counts = index.entity_counts(int(row.household_id), int(row.anchor_time), window_ns=1800 * 10**9)
    assert set(ids) == {int(p) for p in row.revealed_items}  # basket 100 is an hour older
    ids, counts = index.entity_counts(int(row.household_id), int(row.anchor_time), max_rows=1)
    assert len(ids) == 1 and counts.sum() == 1


def test_entity_items_by_count_then_recency():
    tx = _tx([(0, 1, 10, 5), (0, 1, 10, 6), (100, 1, 11, 6), (200, 1, 12, 7), (300, 1, 13, 5), (400, 1, 14, 8)])
    index = InteractionIndex(tx, COLS)
    t_end = int(tx["transaction_timestamp"].max())
    # 5 and 6 twice (5 more recently), then 7 (older than 8 but 8 is the anchor line: not visible)
    assert list(index.entity_items(1, t_end)) == [5, 6, 7]
    assert list(index.entity_items(1, t_end + 1)) == [5, 6, 8, 7]
    assert len(index.entity_items(2, t_end)) == 0


def test_co_occurrence_counts_sessions_before_the_cut_and_leaves_shown_out():
    tx = _tx([(0, 1, 10, 1), (0, 1, 10, 2), (0, 1, 10, 3),
              (10, 2, 20, 1), (10, 2, 20, 3), (10, 2, 20, 4),
              (20, 3, 30, 2), (20, 3, 30, 5),
              (100, 4, 40, 1), (100, 4, 40, 9)])  # at/after the cut: not counted
    co = CoOccurrence(tx, COLS, T0 + 50 * 10**9)
    assert list(co.items(np.array([1]))) == [3, 2, 4]  # 3 in two sessions with 1, then 2 and 4 by id
    assert list(co.items(np.array([1, 2]))) == [3, 4, 5]  # summed over shown items, shown left out
    assert len(co.items(np.array([9]))) == 0 and len(co.items(np.zeros(0, np.int64))) == 0


def test_ranking_metrics_by_hand():
    scores = np.array([[0.9, 0.8, 0.1, 0.5]])
    m = ranking_metrics(scores, [(np.array([1, 2]), 3)], ks=(2,))
    assert m["recall@2"] == pytest.approx(1 / 3)  # one of three bought products in the top 2
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


def _spec(session=None, extra_id=False):
    cols = {"event_id": "id", "at": "timestamp", "user_id": "id", "item_id": "id", "visit_id": "id"}
    if extra_id:
        cols["device_id"] = "id"
    task = {"name": "next", "kind": "next_item", "entity": "users", "facts": "events", "item": "item_id",
            "horizon": "7 days", **({"session": session} if session else {})}
    return {"name": "shop", "tables": {
        "users": {"source": "u.parquet", "primary_key": "user_id", "columns": {"user_id": "id"}},
        "items": {"source": "i.parquet", "primary_key": "item_id", "columns": {"item_id": "id"}},
        "events": {"source": "e.parquet", "primary_key": "event_id", "time_column": "at", "columns": cols}},
        "links": [{"table": "events", "column": "user_id", "references": "users"},
                  {"table": "events", "column": "item_id", "references": "items"}],
        "base_tasks": [task]}


def test_ranking_columns_from_the_spec():
    assert RankingColumns.of(parse_project(_spec())) == RankingColumns("events", "at", "user_id", "item_id", "visit_id")
    assert RankingColumns.of(parse_project(_spec("visit_id", extra_id=True))).session == "visit_id"
    with pytest.raises(SpecError, match=r"base_tasks\[0\]\.session: name the column"):
        RankingColumns.of(parse_project(_spec(extra_id=True)))  # two candidate columns: say which
    with pytest.raises(SpecError, match=r"base_tasks\[0\]\.session: unknown column 'basket'"):
        parse_project(_spec("basket"))
