"""distill and export of the Complete Journey project (a ranking plan) through the CLI, on a small
prefix of the purchase lines."""
import json

import numpy as np
import pytest

from offline.embeddings import random_embeddings, write_embeddings_parquet
from schemas.plan_loading import builtin_plan

DAY = 86_400 * 10**9
MAX_ROWS = 60_000  # the first ~3 weeks of purchase lines


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    import pandas as pd
    import yaml

    from offline.cli import main

    run = tmp_path_factory.mktemp("cj_ranker")
    assert main(["offline", "dataset", "complete-journey", "--max-rows", str(MAX_ROWS), "--out", str(run)]) == 0
    spec = yaml.safe_load((run / "project.yaml").read_text())
    spec["split"]["test_days"] = 7  # three weeks of lines: two before the test week
    (run / "project.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    tx = pd.read_parquet(run / "transactions.parquet")
    t0 = int(tx["transaction_timestamp"].min())
    plan = builtin_plan("recsys")
    snaps = [t0 + 2 * DAY + w * 7 * DAY for w in range(4)]
    types, ids, st, vecs = random_embeddings(plan, {"households": np.unique(tx["household_id"]),
                                                    "products": np.unique(tx["product_id"])[::3]}, snaps, dim=8)
    write_embeddings_parquet(run / "embeddings.parquet", types, ids, st, vecs)
    return run / "project.yaml"


@pytest.fixture(scope="module")
def run_dir(project):
    return project.parent


def test_recsys_distill_then_export(project, run_dir, tmp_path):
    from offline.cli import main
    from offline.data.sources import load_tables, split_instants
    from offline.data.spec import load_project
    from offline.export.bundle import load_bundle

    run = ["--project", str(project), "--run-dir", str(run_dir), "--no-progress"]
    assert main(["offline", "distill", *run, "--examples", "150", "--epochs", "1", "--negatives", "16",
                 "--soft-weight", "0.3"]) == 0
    report = json.loads((run_dir / "distill.json").read_text())
    assert report["examples"] == 150 and report["train"]["rows"] == 150
    spec = load_project(project)
    assert report["example_range_ns"][1] == split_instants(spec, load_tables(spec))["test_start_ns"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "distill" in manifest["steps"]

    assert main(["offline", "export", *run, "--repo", str(tmp_path)]) == 0
    bundle = load_bundle(tmp_path / "relstream_ranker" / "1")
    assert len(bundle.catalog) == 1000 and bundle.manifest["trained"] is True
    assert bundle.manifest["parameters"] == bundle.model.count_parameters()
    assert bundle.manifest["kind"] == "ranking"


def test_score_examples_matches_the_bundle_and_pads_minus_inf(run_dir):
    from offline.datasets.complete_journey import load_complete_journey
    from offline.embeddings import EmbeddingTable
    from offline.distillation.shallow_model import build_model, load_model
    from offline.quality.ranking import score_examples
    from offline.tasks.ranking import InteractionIndex, RankingColumns, ranking_examples
    from schemas.tensors import build_tensors
    from rti_store import MemoryWindowStore
    from schemas.interactions import interactions_of

    plan = builtin_plan("recsys")
    tx = load_complete_journey(max_rows=MAX_ROWS).table("transactions")
    table = EmbeddingTable.from_parquet(run_dir / "embeddings.parquet", plan)
    model = build_model(plan, table.dim, seed=3)
    t1 = int(tx["transaction_timestamp"].max())
    cols = RankingColumns("transactions", "transaction_timestamp", "household_id", "product_id", "basket_id")
    ex = ranking_examples(tx, cols, t1 - 3 * DAY, t1, max_examples=4, seed=1)
    cands = np.full((len(ex), 30), -1, np.int64)
    index = InteractionIndex(tx, cols)
    for i, a in enumerate(ex["anchor_time"]):
        cands[i, :20 + i] = index.popular(int(a), 20 + i)[0]
    scores = score_examples(model, table, ex, cands, tx=tx, plan=plan, progress=False)
    assert scores.shape == cands.shape and np.isneginf(scores[cands < 0]).all()
    # Example 2 by hand: its household's lines strictly before the anchor, build_tensors, the model.
    from offline.distillation.shallow_model import serve
    e = ex.iloc[2]
    store = MemoryWindowStore(plan)
    past = tx[(tx["household_id"] == e["household_id"]) & (tx["transaction_timestamp"] < e["anchor_time"])]
    store.append([a for r in past.to_dict("records") for a in interactions_of(plan, "transactions", r)])
    hop = plan.hops[0].key.key
    req = build_tensors(plan, {"household_id": int(e["household_id"])},
                        {hop: store.read(hop, int(e["household_id"]), int(e["anchor_time"]))},
                        anchor_time=int(e["anchor_time"]), candidates=cands[2][cands[2] >= 0])
    want = serve(model, plan, req, table)["score"][0]
    assert np.abs(scores[2, :22] - want).max() <= 1e-5
    assert callable(load_model)
