"""The leakage rules of the generic graph, once for every schema (fraud, bank, shop):

* a sampled node other than the seed is strictly older than its seed time;
* a sample drawn from the full data equals, id for id and feature for feature, the sample drawn
  from the data cut with ``upto(t)`` (rows >= t removed, labels newer than t - delay masked):
  nothing at or after t, and no label newer than t - its delay, can reach a seed;
* the trained model cannot depend on anything the training cut hides;
* "most recent K rows before t" and the entity-aggregate targets equal brute force; trimmed
  message passing gives the seeds the outputs of the full computation.

Request-time scoring of a fact row (quality's deep scorer) is tested against the cut data in
tests/offline/test_quality_scoring.py.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from offline.data.spec import EntityAggregateTask
from offline.datasets.base import NS_PER_DAY
from offline.models.train import DeepTrainConfig, RelGNNConfig, fit_encodings, train_deep, training_plan
from offline.relgraph.graph import build_graph
from offline.relgraph.sampler import NodeFeatures, SamplerConfig, recent_rows, sample
from offline.tasks.targets import entity_aggregate
from tests.offline.schemas_for_tests import make_project

SCHEMAS = ["fraud", "bank", "shop"]
CFG = SamplerConfig((6, 4, 3))


@pytest.fixture(scope="module", params=SCHEMAS)
def schema(request, tmp_path_factory):
    return make_project(request.param, tmp_path_factory.mktemp(request.param))


def _seeds(g, ds, t, rng):
    """Up to 25 rows of every table that exist before t (fact rows included), all seeded at t;
    plus fact rows at exactly t - 1 ns and at t (ties with the cut) where the data allows."""
    seeds = {}
    for ntype in g.node_types:
        rows = np.arange(g.num_nodes[ntype])
        rows = rows[g.visible(ntype, rows, np.full(len(rows), t))]
        if len(rows):
            pick = np.sort(rng.choice(rows, size=min(25, len(rows)), replace=False))
            seeds[ntype] = (pick, np.full(len(pick), t, np.int64))
    return seeds


def _instants(project, ds):
    plan = training_plan(project, ds)
    fact = project.fact_tables[0]
    times = ds.table(fact)[project.spec.tables[fact].time_column].to_numpy()
    mid = int(times[len(times) // 2])  # exactly on a row's time: that row must not be seen
    return [mid, plan["test_start_ns"], mid + NS_PER_DAY // 3]


def test_sampled_nodes_are_strictly_older_than_their_seed(schema):
    _, project, ds = schema
    g = build_graph(ds)
    feats = NodeFeatures(g, fit_encodings(project, ds, training_plan(project, ds)["test_start_ns"]), ds.frames)
    rng = np.random.default_rng(0)
    for t in _instants(project, ds):
        batch = sample(g, feats, _seeds(g, ds, t, rng), CFG)
        for ntype in g.node_types:
            if g.node_time[ntype] is None:
                continue
            n_seeds = int(batch[ntype].num_seeds)
            rows = batch[ntype].n_id.numpy()[n_seeds:]
            assert (g.node_time[ntype][rows] < batch[ntype].seed_time.numpy()[n_seeds:]).all(), ntype
        assert sum(batch[et].edge_index.shape[1] for et in g.edge_types) > 0


def test_sample_equals_the_sample_of_the_cut_dataset(schema):
    _, project, ds = schema
    enc = fit_encodings(project, ds, training_plan(project, ds)["test_start_ns"])
    g = build_graph(ds)
    feats = NodeFeatures(g, enc, ds.frames)
    rng = np.random.default_rng(1)
    for t in _instants(project, ds):
        seeds = _seeds(g, ds, t, rng)
        cut = ds.upto(t)
        assert cut.label_cut_time_ns <= t
        g_cut = build_graph(cut)
        full = sample(g, feats, seeds, CFG)
        past = sample(g_cut, NodeFeatures(g_cut, enc, cut.frames), seeds, CFG)
        for ntype in g.node_types:
            for key in ("n_id", "seed_time", "hop", "x", "cat", "age_days"):
                assert torch.equal(full[ntype][key], past[ntype][key]), (ntype, key, t)
        for et in g.edge_types:
            assert torch.equal(full[et].edge_index, past[et].edge_index), et


def test_label_features_follow_the_delay(schema):
    """Each label of a fact row is visible to a seed at t only if the row is older than t - delay."""
    _, project, ds = schema
    g = build_graph(ds)
    feats = NodeFeatures(g, fit_encodings(project, ds, training_plan(project, ds)["test_start_ns"]), ds.frames)
    for table, labels in g.label_columns.items():
        for label, values in labels.items():
            delay = g.label_delays_ns[table][label]
            rows = np.flatnonzero(values > 0)[:50]
            for t in (g.node_time[table][rows] + delay, g.node_time[table][rows] + delay + 1):
                dyn = feats.dynamic(table, rows, t)
                j = 2 * list(labels).index(label) + 2 * len(feats.static[table][2][0])  # (value, known) pairs
                known = dyn[:, j + 1].astype(bool)
                assert (known == (g.node_time[table][rows] < t - delay)).all()
                assert (dyn[known, j] == values[rows][known]).all() and (dyn[~known, j] == 0).all()


def test_training_ignores_everything_the_cut_hides():
    """Flip every label newer than T - delay and scale every amount at/after T: bit-identical training."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        _, project, ds = make_project("bank", Path(d))
    cfg = DeepTrainConfig(fanouts=(4, 3, 2), epochs=1, batch_size=64, max_samples_per_epoch=300,
                          max_val_samples=10, model=RelGNNConfig(hidden=8, embedding_dim=4, time_dim=2))
    T = training_plan(project, ds)["test_start_ns"]
    frames = dict(ds.frames)
    pay = frames["card_payments"].copy()
    t = pay["payment_time"].to_numpy()
    newer = t >= T - 7 * NS_PER_DAY
    pay.loc[newer, "is_fraud"] = 1 - pay.loc[newer, "is_fraud"]
    pay.loc[t >= T, "amount"] *= 7
    from offline.datasets.base import RelationalDataset

    changed = RelationalDataset(ds.name, ds.meta, {**frames, "card_payments": pay})
    quiet = {"progress": False, "log": lambda *_: None}
    _, a = train_deep(project, ds, cfg, **quiet)
    _, b = train_deep(project, changed, cfg, **quiet)
    assert a["history"] == b["history"]
    _, c = train_deep(project, ds, replace(cfg, seed=1), **quiet)
    assert c["history"] != a["history"]


def test_recent_rows_match_brute_force(schema):
    """The K most recent referencing rows strictly before t, newest first (ties on t excluded)."""
    _, _, ds = schema
    g = build_graph(ds)
    rng = np.random.default_rng(0)
    for link in g.links:
        if link.indptr is None:
            continue
        times = g.node_time[link.table]
        ent = rng.integers(0, g.num_nodes[link.target], 100)
        ts = rng.integers(int(times.min()), int(times.max()), 100)
        ts[:10] = times[rng.integers(0, len(times), 10)]  # exactly on a row's time: that row excluded
        owner, got_rows = recent_rows(link, ent, ts, 5)
        for i in range(len(ent)):
            cand = np.flatnonzero((link.target_row == ent[i]) & (times < ts[i]))
            want = cand[np.lexsort((cand, times[cand]))][::-1][:5]
            got = got_rows[owner == i]
            assert list(got) == list(want), (link.edge_type, i)


def test_entity_aggregate_target_is_the_future_window(schema):
    """EXISTS / COUNT of matching fact rows in [t, t + horizon), by brute force."""
    _, project, ds = schema
    g = build_graph(ds)
    tasks = [t for t in project.tasks if isinstance(t, EntityAggregateTask)]
    for task in tasks:
        link = g.link(task.facts, project.link_column(task.facts, task.entity, task.via))
        times = g.node_time[task.facts]
        t = int(times[len(times) // 2])  # exactly on a row's time: that row counts
        s = entity_aggregate(project, ds, g, task, np.array([t]))
        facts = ds.table(task.facts)
        match = np.ones(len(facts), bool)
        for col, value in task.filter.items():
            match &= (facts[col].astype(object) == value).to_numpy(bool)
        for row, y in list(zip(s.rows, s.y))[:40]:
            m = (link.target_row == row) & (times >= t) & (times < t + task.horizon.ns) & match
            assert y == (float(m.any()) if task.aggregate == "exists" else float(m.sum())), (task.name, row)
    assert tasks or project.name == "shop"


def test_trimmed_message_passing_equals_the_full_computation(schema):
    """The deep model drops messages that cannot reach a seed; the seeds' outputs are those of
    every edge (all hops set to 0: nothing trimmed)."""
    from offline.models.relgnn import RelGNN

    _, project, ds = schema
    g = build_graph(ds)
    feats = NodeFeatures(g, fit_encodings(project, ds, training_plan(project, ds)["test_start_ns"]), ds.frames)
    t = training_plan(project, ds)["test_start_ns"]
    batch = sample(g, feats, _seeds(g, ds, t, np.random.default_rng(0)), CFG)
    torch.manual_seed(0)
    net = RelGNN(RelGNNConfig(hidden=16, embedding_dim=8), list(g.node_types), g.edge_types,
                 {n: feats.width(n) for n in g.node_types}, {n: feats.encodings[n].cardinalities for n in g.node_types},
                 len(CFG.fanouts), {}).eval()
    with torch.no_grad():
        trimmed = net(batch)
        for n in g.node_types:
            batch[n].hop = torch.zeros_like(batch[n].hop)
        full = net(batch)
    assert set(trimmed) == set(full) and trimmed
    for n in trimmed:
        torch.testing.assert_close(trimmed[n], full[n], rtol=1e-5, atol=1e-6)
