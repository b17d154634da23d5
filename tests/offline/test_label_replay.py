"""Label feedback offline == online: the replay's tensors equal those the scorer builds from a
window store fed the way ingest feeds it (labels in any order, duplicated, in batches), for every
request -- in memory and in the real Redis of the test stack.

Online, the store at request time T holds what ingest committed by then: every transaction before
T and every label known before T (a label event is produced when its label becomes known).
"""
from __future__ import annotations

import random
import uuid

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline.distillation.replay import label_rows, replay_requests, replay_rows
from rti_store import MemoryWindowStore, RedisWindowStore
from schemas.interactions import interactions_of, with_known_time
from schemas.plan_loading import builtin_plan
from scorer.pipeline import event_tensors, prepare_event, split_windows, window_requests

DAY = 86_400 * 10**9
HOUR = 3_600 * 10**9
FL = builtin_plan("fraud_labels")
T0 = 20_000 * DAY


def frames(spec, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions (with their labels) and the label events: by default each transaction's label
    at its time + delay; some known earlier or later than that (``spec`` extras)."""
    rng = np.random.default_rng(seed)
    n = len(spec)
    times = T0 + np.sort(np.asarray([s[0] for s in spec], np.int64) * 7 * HOUR)
    tx = pd.DataFrame({"transaction_id": np.arange(1, n + 1), "tx_datetime": times,
                       "customer_id": [s[1] for s in spec], "terminal_id": [s[2] for s in spec],
                       "tx_amount": rng.gamma(2.0, 20.0, n).astype(np.float32),
                       "tx_fraud": [s[3] for s in spec]})
    labels = label_rows(FL, tx)
    known = labels["label_known_at"].to_numpy().astype(object)
    for i, s in enumerate(spec):
        if s[4] is not None:  # an explicit known time, early or late
            known[i] = int(times[i]) + s[4] * 5 * HOUR
        elif i % 3 == 0:
            known[i] = None  # not given: the event says nothing, the delay applies
    labels["label_known_at"] = known
    return tx, labels


def online_tensors(store, tx: pd.DataFrame, labels: pd.DataFrame, seed: int) -> list[dict]:
    """The scorer's path on a store fed in time steps: before scoring at T, everything ingest has
    by then arrives in a shuffled batch, with some duplicates of earlier events."""
    rng = random.Random(seed)
    tx_rows = tx.drop(columns=["tx_fraud"]).to_dict("records")
    label_recs = [{k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else v) for k, v in r.items()}
                  for r in labels.astype(object).to_dict("records")]
    pending = [("transactions", r["tx_datetime"], r) for r in tx_rows]
    pending += [("transaction_labels", with_known_time(FL, r)["label_known_at"], r) for r in label_recs]
    pending.sort(key=lambda p: p[1])
    sent: list = []
    out, pos = [], 0
    facts = tx.drop(columns=["tx_fraud"]).to_dict("records")
    for fact in facts:
        T = int(fact["tx_datetime"])
        batch = []
        while pos < len(pending) and pending[pos][1] < T:
            batch.append(pending[pos])
            pos += 1
        batch += rng.sample(sent, min(len(sent), 3))  # redeliveries
        rng.shuffle(batch)
        sent += batch
        store.append([a for table, _, r in batch for a in interactions_of(FL, table, r)])
        ev = prepare_event(FL, fact)
        keys, as_of = window_requests([ev])
        windows = split_windows([ev], store.read_many(keys, as_of))[0]
        out.append(event_tensors(FL, ev, windows))
    return out


@pytest.fixture(params=["memory", "redis"])
def make_store(request):
    made = []

    def make():
        store = (RedisWindowStore(FL, request.getfixturevalue("redis_client"), key_prefix=f"p{uuid.uuid4().hex[:8]}")
                 if request.param == "redis" else MemoryWindowStore(FL))
        made.append(store)
        return store
    yield make
    for s in made:
        s.close()


txs = st.lists(st.tuples(st.integers(0, 200), st.integers(1, 3), st.integers(1, 4), st.integers(0, 1),
                         st.one_of(st.none(), st.none(), st.integers(-1, 80))), min_size=2, max_size=45)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=txs, seed=st.integers(0, 2**31))
def test_replay_equals_the_online_path(make_store, spec, seed):
    tx, labels = frames(spec, seed)
    facts = tx.drop(columns=["tx_fraud"]).to_dict("records")
    offline = replay_requests(FL, {"transactions": tx, "transaction_labels": labels}, facts, progress=False)
    online = online_tensors(make_store(), tx, labels, seed)
    assert len(offline) == len(online) == len(tx)
    for i, (a, b) in enumerate(zip(offline, online)):
        assert set(a) == set(b) == set(FL.tensor_names)
        for name in FL.tensor_names:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), (i, name, a[name], b[name])


def test_replay_rows_derive_labels_with_the_delay():
    spec = [(d, 1, 1, int(d % 5 == 0), None) for d in range(0, 160, 3)]
    tx, _ = frames(spec, 0)
    rows = replay_rows(FL, tx, progress=False)
    anchors = tx["tx_datetime"].to_numpy()
    fraud = tx["tx_fraud"].to_numpy()
    known = anchors + FL.label_feedback.delay.ns
    for i in range(len(tx)):
        T = anchors[i]
        for days in (1, 7, 30):
            inside = (known >= T - days * DAY) & (known < T)
            assert rows.scalars[f"label:transactions.terminal_id:{days}d:count"][i] == inside.sum()
            assert rows.scalars[f"label:transactions.customer_id:{days}d:positives"][i] == (inside & (fraud > 0)).sum()
    assert rows.scalars["label:transactions.terminal_id:30d:count"].max() > 0  # the data reach past the delay


def test_sql_rows_refuse_label_feedback_and_the_replay_engine_builds_it(tmp_path):
    from offline.rows import RowsPlanError, build_rows, load_rows

    tx, _ = frames([(d, 1 + d % 2, 1 + d % 3, int(d % 4 == 0), None) for d in range(0, 120, 2)], 1)
    for engine in ("duckdb", "spark"):
        with pytest.raises(RowsPlanError, match="^label_feedback: .*use engine='replay'"):
            build_rows(FL, tx, engine=engine, out=tmp_path / engine, progress=False)
    build_rows(FL, tx, engine="replay", out=tmp_path / "replay", progress=False)
    stored = load_rows(tmp_path / "replay", FL).rows
    direct = replay_rows(FL, tx, progress=False)
    for name in FL.tensor_names:
        if FL.tensors[FL.tensor_names.index(name)].kind == "label":
            assert np.array_equal(stored.scalars[name], direct.scalars[name]), name


def test_the_shallow_model_reads_the_known_label_inputs(tmp_path):
    from offline.distillation.shallow_model import FeatureLayout, build_model, serve
    from offline.embeddings import EmbeddingTable, write_embeddings_parquet
    from schemas.tensors import stack_requests

    layout = FeatureLayout.of(FL)
    assert len(layout.label_inputs) == 18 and FeatureLayout.of(builtin_plan("fraud")).label_inputs == ()
    assert layout.n_fact_features == FeatureLayout.of(builtin_plan("fraud")).n_fact_features + 18
    path = tmp_path / "e.parquet"
    write_embeddings_parquet(path, [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 8), np.float32))
    table = EmbeddingTable.from_parquet(path, FL)
    tx, labels = frames([(d, 1, 1, int(d % 3 == 0), None) for d in range(0, 150, 2)], 2)
    reqs = replay_requests(FL, {"transactions": tx, "transaction_labels": labels},
                           tx.drop(columns=["tx_fraud"]).to_dict("records"), progress=False)
    model = build_model(FL, 8, seed=0)
    batch = stack_requests(FL, reqs[-4:])
    base = serve(model, FL, batch, table)["score"]
    batch["label:transactions.terminal_id:7d:positives"] = batch["label:transactions.terminal_id:7d:positives"] + 5
    assert not np.allclose(serve(model, FL, batch, table)["score"], base)
