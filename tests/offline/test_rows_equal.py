"""DuckDB, Spark and the Python replay build identical training rows on random event streams.

The streams are small but adversarial for the window semantics: timestamps drawn from a few
seconds (many ties), rows in random order (out-of-order arrival), event ids unrelated to time,
windows empty and overfull (max_len 3 / 2 with a 10 s look-back), embedding snapshots for only
some entities and times (cold starts, too-fresh and too-old snapshots), a random set of anchors.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline.embeddings import write_embeddings_parquet
from offline.rows import build_rows, load_rows
from schemas.plan_loading import builtin_plan, parse_plan

S = 10**9
T0 = 1_700_000_000 * S
DIM = 3


def small_plan():
    raw = builtin_plan("fraud").to_dict()
    dist = raw["distillation"]
    dist["real_time_offset"] = {"value": 10, "unit": "seconds"}
    dist["min_embedding_offset"] = {"value": 2, "unit": "seconds"}
    dist["max_embedding_offset"] = {"value": 8, "unit": "seconds"}
    hops = list(dist["real_time_interactions"])
    dist["real_time_interactions"] = {hops[0]: 3, hops[1]: 2}
    raw["label"] = "tx_fraud"
    return parse_plan(raw)


PLAN = small_plan()


@st.composite
def streams(draw, max_events: int = 40):
    n = draw(st.integers(1, max_events))
    n_cust, n_term = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seconds = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    frame = pd.DataFrame({
        "transaction_id": np.asarray(draw(st.permutations(range(1000, 1000 + n))), np.int64),
        "tx_datetime": T0 + np.asarray(seconds, np.int64) * S,
        "customer_id": np.asarray(draw(st.lists(st.integers(0, n_cust - 1), min_size=n, max_size=n)), np.int64),
        "terminal_id": np.asarray(draw(st.lists(st.integers(0, n_term - 1), min_size=n, max_size=n)), np.int64),
        "tx_amount": np.asarray(draw(st.lists(st.floats(0, 1e4, allow_nan=False, width=32), min_size=n, max_size=n)),
                                np.float32),
        "tx_fraud": np.zeros(n, np.int64),
    })
    mask = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    mask[draw(st.integers(0, n - 1))] = True
    snaps = []
    for etype, count in (("customers", n_cust), ("terminals", n_term)):
        for entity in range(count):
            for sec in draw(st.sets(st.integers(-10, 30), max_size=3)):
                snaps.append((etype, entity, T0 + sec * S))
    return frame, mask, snaps


def _write_snapshots(path: Path, snaps) -> Path:
    rng = np.random.default_rng(len(snaps))
    vectors = rng.normal(size=(len(snaps), DIM)).astype(np.float32)
    write_embeddings_parquet(path, [s[0] for s in snaps], [s[1] for s in snaps], [s[2] for s in snaps], vectors)
    return path


def _assert_same(a, b, plan):
    assert (a.rows.row_index == b.rows.row_index).all()
    for spec in plan.tensors:
        if spec.kind == "rti":
            n = a.rows.lengths[spec.hop_key]
            assert (n == b.rows.lengths[spec.hop_key]).all(), spec.name
            valid = np.arange(a.rows.sequences[spec.name].shape[1])[None, :] < n[:, None]
            assert (a.rows.sequences[spec.name][valid] == b.rows.sequences[spec.name][valid]).all(), spec.name
        else:
            assert (a.rows.scalars[spec.name] == b.rows.scalars[spec.name]).all(), spec.name
    for i in range(len(a.rows)):  # the tensors a request would carry, one by one
        ra, rb = a.rows.request(i), b.rows.request(i)
        for name in plan.tensor_names:
            np.testing.assert_array_equal(ra[name], rb[name], err_msg=name)
    assert set(a.embeddings) == set(b.embeddings)
    for key, (vectors, missing) in a.embeddings.items():
        assert (missing == b.embeddings[key][1]).all(), key
        np.testing.assert_array_equal(vectors, b.embeddings[key][0], err_msg=key)


def _rows(tmp: Path, engine: str, frame, mask, snaps, **kw):
    emb = _write_snapshots(tmp / "emb.parquet", snaps)
    build_rows(PLAN, frame, emb, mask, engine=engine, out=tmp / engine, progress=False, **kw)
    return load_rows(tmp / engine, PLAN)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=streams())
def test_duckdb_equals_the_replay(tmp_path_factory, data):
    frame, mask, snaps = data
    tmp = tmp_path_factory.mktemp("rows")
    replay = _rows(tmp, "replay", frame, mask, snaps)
    assert len(replay.rows) == mask.sum()
    # chunk_events 8: several anchor-time chunks, each with its own look-back
    _assert_same(replay, _rows(tmp, "duckdb", frame, mask, snaps, chunk_events=8), PLAN)


@pytest.fixture(scope="module")
def spark():
    from offline.rows.engines import local_spark_session

    session = local_spark_session("local[1]", shuffle_partitions=1, driver_memory="1g")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=streams(max_events=60))
def test_spark_equals_the_replay(tmp_path_factory, spark, data):
    frame, mask, snaps = data
    tmp = tmp_path_factory.mktemp("rows")
    _assert_same(_rows(tmp, "replay", frame, mask, snaps), _rows(tmp, "spark", frame, mask, snaps, spark=spark), PLAN)
