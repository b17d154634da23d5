"""Complete Journey: real data loads into the dataset interface and the generic graph."""
import pytest

from offline.datasets.complete_journey import load_complete_journey
from offline.relgraph.graph import build_graph


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
    g = build_graph(ds)
    assert set(g.node_types) == {"households", "products", "transactions"} and g.num_nodes["transactions"] == len(tx)
    assert len(g.link("transactions", "household_id").target_row) == len(tx)
