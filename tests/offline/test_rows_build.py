"""build_rows / read_rows: chunked Parquet output, streaming batches, and clear errors on bad input."""
import numpy as np
import pandas as pd
import pytest

from offline.distillation.replay import replay_rows
from offline.rows import RowsInputError, RowsPlanError, build_rows, load_rows, read_manifest, read_rows
from schemas.plan_loading import builtin_plan, parse_plan
from schemas.tensors import stack_requests


@pytest.fixture(scope="module")
def built(plan, tx, tmp_path_factory):
    out = tmp_path_factory.mktemp("rows") / "duckdb"
    mask = np.random.default_rng(0).random(len(tx)) < 0.6
    manifest = build_rows(plan, tx, score_mask=mask, out=out, chunk_events=900, progress=False)
    return out, mask, manifest


def test_rows_equal_the_replay_in_chunks(plan, tx, built):
    out, mask, manifest = built
    assert manifest["engine"] == "duckdb" and manifest["rows"] == mask.sum()
    assert len(manifest["chunks"]) > 1 and sum(c["rows"] for c in manifest["chunks"]) == mask.sum()
    got = load_rows(out, plan).rows
    want = replay_rows(plan, tx, score_mask=mask, progress=False)
    assert (got.row_index == want.row_index).all()
    idx = np.arange(0, len(want), 7)
    a, b = got.batch(idx), want.batch(idx)  # the stacked model inputs, padding included
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_reader_streams_bounded_batches_in_anchor_order(plan, built):
    out, mask, _ = built
    batches = list(read_rows(out, plan, batch_rows=100))
    assert all(1 <= len(b) <= 100 for b in batches)
    assert sum(len(b) for b in batches) == mask.sum()
    anchors = np.concatenate([b.rows.scalars["anchor_time"] for b in batches])
    assert (np.diff(anchors) >= 0).all()  # chunks in anchor-time order, rows in input order within
    whole = load_rows(out, plan).rows
    streamed = np.concatenate([b.rows.row_index for b in batches])
    assert sorted(streamed.tolist()) == whole.row_index.tolist()
    first = batches[0].rows
    stacked = stack_requests(plan, [first.request(i) for i in range(len(first))])
    np.testing.assert_array_equal(stacked["anchor_time"], first.batch(range(len(first)))["anchor_time"])


def test_reader_refuses_rows_of_another_plan(built):
    out, _, _ = built
    other = builtin_plan("fraud").to_dict()
    other["distillation"]["real_time_offset"] = {"value": 1, "unit": "days"}
    with pytest.raises(ValueError, match="built for plan"):
        next(read_rows(out, parse_plan(other)))
    assert read_manifest(out)["plan"] == "fraud"


@pytest.mark.parametrize("change, field", [
    (lambda f: f.drop(columns=["tx_amount"]), "transactions.tx_amount: missing column"),
    (lambda f: f.assign(tx_amount=f["tx_amount"].where(f.index != 5)), "transactions.tx_amount: null value (row 5)"),
    (lambda f: f.assign(tx_amount=np.where(f.index == 3, np.inf, f["tx_amount"])), "transactions.tx_amount: non-finite"),
    (lambda f: f.assign(customer_id=f["customer_id"].astype(str)), "transactions.customer_id: expected integers"),
])
def test_bad_events_name_the_column(plan, tx, tmp_path, change, field):
    with pytest.raises(RowsInputError, match=field.replace("(", r"\(").replace(")", r"\)")):
        build_rows(plan, change(tx.head(50).copy()), out=tmp_path / "rows", progress=False)


def test_bad_arguments_are_refused(plan, tx, tmp_path):
    with pytest.raises(ValueError, match="engine: unknown engine 'sqlite'"):
        build_rows(plan, tx, engine="sqlite", out=tmp_path / "rows")
    with pytest.raises(RowsInputError, match="score_mask: expected 50 flags"):
        build_rows(plan, tx.head(50), score_mask=np.ones(3, bool), out=tmp_path / "rows", progress=False)
    with pytest.raises(RowsPlanError, match="ranking.candidate_column"):
        build_rows(builtin_plan("recsys"), pd.DataFrame(), out=tmp_path / "rows", progress=False)
