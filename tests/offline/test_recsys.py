"""Complete Journey: real data loads into the dataset interface; the recommendation path runs."""
import numpy as np
import pytest

from offline.datasets.complete_journey import load_complete_journey
from offline.train_recsys import RecsysConfig, build_recsys_graph, ranking_metrics, train_recsys


@pytest.fixture(scope="module")
def ds():
    return load_complete_journey(max_rows=100_000)


def test_tables_keys_and_times(ds):
    tx = ds.table("transactions")
    assert ds.meta["transactions"].foreign_keys == {"household_id": "households", "product_id": "products"}
    assert tx["transaction_id"].is_unique and str(tx["transaction_timestamp"].dtype) == "int64"
    assert tx["transaction_timestamp"].is_monotonic_increasing
    assert set(tx["household_id"]) <= set(ds.table("households")["household_id"])
    assert set(tx["product_id"]) <= set(ds.table("products")["product_id"])
    g = build_recsys_graph(ds)
    assert g.node_types == ("households", "products") and g.num_edges == len(tx)


def test_ranking_metrics_by_hand():
    scores = np.array([[0.9, 0.8, 0.1, 0.5]])
    m = ranking_metrics(scores, [(np.array([1, 2]), 3)], ks=(2,))
    assert m["recall@2"] == pytest.approx(1 / 3)  # one of three bought products in the top 2
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


def test_recsys_trains_and_reports(ds):
    cfg = RecsysConfig(first_week=1, test_weeks=1, epochs=1, max_positives_per_epoch=512, batch_size=256,
                       candidates=200, eval_households=50, fanouts=(4, 2))
    _, metrics = train_recsys(ds, cfg, progress=False, log=lambda *_: None)
    assert set(metrics["test"]) >= {"gnn", "popularity", "buy_again"}
    for name in ("gnn", "popularity", "buy_again"):
        assert 0 <= metrics["test"][name]["recall@10"] <= 1
