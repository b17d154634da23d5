"""Temporal sampling never looks past the seed time; labels never past the feedback delay."""
from dataclasses import replace

import numpy as np
import pytest

from offline.datasets.base import NS_PER_DAY
from offline.datasets.fraud import TINY, FraudSimConfig, generate_dataset
from offline.deep_model import DeepModelConfig
from offline.evaluate import SplitConfig
from offline.graph import CUSTOMERS, EDGE_TYPES, INTO, NODE_TYPES, TERMINALS, build_graph
from offline.sampler import (SamplerConfig, SnapshotFeatures, future_fraud_labels, node_features, recent_edges,
                             sample_subgraphs)
from offline.train_deep import TrainConfig, snapshot_samples, train, training_window

DELAY = 7 * NS_PER_DAY


@pytest.fixture(scope="module")
def ds():
    return generate_dataset(TINY)


@pytest.fixture(scope="module")
def g(ds):
    return build_graph(ds)


def random_seeds(g, n, rng, t_lo, t_hi):
    return {t: (rng.integers(0, g.num_nodes[t], n), rng.integers(t_lo, t_hi, n)) for t in NODE_TYPES}


def test_recent_edges_match_brute_force(g):
    rng = np.random.default_rng(0)
    t0, t1 = int(g.edge_time.min()), int(g.edge_time.max())
    for ntype in NODE_TYPES:
        ent = rng.integers(0, g.num_nodes[ntype], 200)
        ts = rng.integers(t0, t1, 200)
        ts[:10] = g.edge_time[rng.integers(0, g.num_edges, 10)]  # exactly on an edge time: excluded
        owner, edge = recent_edges(g, ntype, ent, ts, 5)
        for i in range(len(ent)):
            mask = (g.endpoint(ntype) == ent[i]) & (g.edge_time < ts[i])
            cand = np.flatnonzero(mask)
            want = cand[np.lexsort((cand, g.edge_time[cand]))][::-1][:5]  # newest first
            got = edge[owner == i]
            assert set(got) == set(want), (ntype, i)
            assert np.all(np.diff(g.edge_time[got]) <= 0)


def test_no_sampled_edge_or_label_newer_than_allowed(g):
    rng = np.random.default_rng(1)
    t0, t1 = int(g.edge_time.min()), int(g.edge_time.max()) + NS_PER_DAY
    batch = sample_subgraphs(g, random_seeds(g, 64, rng, t0, t1), SamplerConfig((6, 4), DELAY))
    total = 0
    for et in EDGE_TYPES:
        src_t, _, dst_t = et
        e = batch[et]
        seed_time_dst = batch[dst_t].seed_time[e.edge_index[1]]
        seed_time_src = batch[src_t].seed_time[e.edge_index[0]]
        assert (seed_time_dst == seed_time_src).all()  # one seed time per disjoint subgraph
        assert (e.edge_time < seed_time_dst).all()  # strictly older than the seed
        assert (e.edge_age_days > 0).all()
        # Edge features: the label and its "known" flag only for edges older than seed - delay.
        known = e.edge_attr[:, 2].bool()
        assert (known == (e.edge_time < seed_time_dst - DELAY)).all()
        assert (e.edge_attr[~known, 1] == 0).all()
        # Global edge ids point at the right transaction and endpoints.
        eid = e.e_id.numpy()
        assert (g.edge_time[eid] == e.edge_time.numpy()).all()
        assert (g.endpoint(src_t)[eid] == batch[src_t].n_id[e.edge_index[0]].numpy()).all()
        assert (g.endpoint(dst_t)[eid] == batch[dst_t].n_id[e.edge_index[1]].numpy()).all()
        total += e.num_edges
    assert total > 500
    # Known labels did reach some edges (the test is not vacuous).
    assert sum(int(batch[et].edge_attr[:, 1].sum()) for et in EDGE_TYPES) > 0


def test_features_equal_those_of_the_dataset_cut_at_seed_time(ds, g):
    """Everything a seed sees equals what the dataset *as known at the seed time* gives:
    rows >= t removed and labels >= t - delay masked (RelBench-style upto())."""
    rng = np.random.default_rng(2)
    cfg = SamplerConfig((5, 5), DELAY)
    t_day0 = int(ds.table("transactions")["tx_datetime"].min())
    for t in [t_day0 + 12 * NS_PER_DAY + 1234, t_day0 + 20 * NS_PER_DAY, t_day0 + 27 * NS_PER_DAY + 5]:
        seeds = {n: (rng.integers(0, g.num_nodes[n], 40), np.full(40, t)) for n in NODE_TYPES}
        full = sample_subgraphs(g, seeds, cfg)
        cut = sample_subgraphs(build_graph(ds.upto(t, DELAY)), seeds, cfg)
        for n in NODE_TYPES:
            assert (full[n].n_id == cut[n].n_id).all()
            assert (full[n].x == cut[n].x).all()
        for et in EDGE_TYPES:
            assert (full[et].edge_attr == cut[et].edge_attr).all()
            assert (full[et].edge_time == cut[et].edge_time).all()


def test_snapshot_feature_cache_equals_direct_computation(ds, g):
    day0 = int(ds.table("transactions")["tx_datetime"].min()) // NS_PER_DAY * NS_PER_DAY
    snaps = day0 + np.arange(5, 25) * NS_PER_DAY
    cache = SnapshotFeatures(g, snaps, DELAY)
    rng = np.random.default_rng(3)
    for n in NODE_TYPES:
        ent = rng.integers(0, g.num_nodes[n], 300)
        t = snaps[rng.integers(0, len(snaps), 300)]
        np.testing.assert_array_equal(cache.lookup(g, n, ent, t, DELAY), node_features(g, n, ent, t, DELAY))
    seeds = {n: (np.arange(10), np.full(10, snaps[3])) for n in NODE_TYPES}
    a = sample_subgraphs(g, seeds, SamplerConfig((4, 4), DELAY))
    b = sample_subgraphs(g, seeds, SamplerConfig((4, 4), DELAY), features=cache)
    for n in NODE_TYPES:
        assert (a[n].x == b[n].x).all()


def test_training_only_uses_labels_known_at_training_time():
    ds = generate_dataset(FraudSimConfig(**{**TINY.to_dict(), "n_days": 40}))
    cfg = TrainConfig(split=SplitConfig(12, 8, 7, 7), horizon_days=3, warmup_days=3, fanouts=(4, 3), epochs=1,
                      batch_size=64, max_val_samples=200, model=DeepModelConfig(hidden=8, embedding_dim=4, heads=1, time_dim=2))
    win = training_window(ds, cfg)
    # Every target window ends by the train end: labels the trainer reads are all visible.
    assert win["train_snapshots_ns"].max() + cfg.horizon_days * NS_PER_DAY <= win["train_end_ns"]
    assert win["trained_at_ns"] - cfg.label_delay_ns == win["train_end_ns"]
    known = build_graph(ds.upto(win["trained_at_ns"], cfg.label_delay_ns))
    full = build_graph(ds)
    a = snapshot_samples(known, win["train_snapshots_ns"], cfg.horizon_days * NS_PER_DAY)
    b = snapshot_samples(full, win["train_snapshots_ns"], cfg.horizon_days * NS_PER_DAY)
    assert (a.y == b.y).all() and a.y.sum() > 0

    # Perturb everything the trainer must not see (labels of transactions from the train end
    # on, and all rows from the training instant on): the trained model's history is unchanged.
    tx = ds.table("transactions").copy()
    late = tx["tx_datetime"] >= win["train_end_ns"]
    tx.loc[late, "tx_fraud"] = 1 - tx.loc[late, "tx_fraud"]
    tx.loc[tx["tx_datetime"] >= win["trained_at_ns"], "tx_amount"] *= 7
    perturbed = replace(ds, frames={**ds.frames, "transactions": tx})
    _, m1 = train(ds, cfg, progress=False, log=lambda *_: None)
    _, m2 = train(perturbed, cfg, progress=False, log=lambda *_: None)
    assert m1["history"] == m2["history"]
    assert m1["train_positives"] == m2["train_positives"]


def test_base_task_label_is_future_window(g):
    t = int(g.edge_time[len(g.edge_time) // 2])
    h = 5 * NS_PER_DAY
    for n in (CUSTOMERS, TERMINALS):
        ent = np.arange(g.num_nodes[n])
        y = future_fraud_labels(g, n, ent, np.full(len(ent), t), h)
        for i in ent[:30]:
            m = (g.endpoint(n) == i) & (g.edge_time >= t) & (g.edge_time < t + h)
            assert y[i] == float(g.edge_fraud[m].any())
    assert INTO[CUSTOMERS][2] == CUSTOMERS and INTO[TERMINALS][2] == TERMINALS
