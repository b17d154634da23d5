"""The ranking quality report through the generic commands on a small Complete Journey prefix:
dataset -> train-deep -> embed -> distill -> quality, on a spec without an explicit session
column (it is inferred), run directory laid out as `train-deep`/`embed` leave it."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from offline.cli import main
from offline.data.sources import load_tables, split_instants
from offline.data.spec import load_project
from offline.embeddings import EmbeddingTable
from offline.models.train import DeepModel
from offline.quality.ranking import AnchorEmbedder
from offline.tasks.ranking import RankingColumns, ranking_examples

MAX_ROWS = 60_000  # about two weeks of purchase lines
DEEP = ["--epochs", "1", "--max-samples-per-epoch", "300", "--fanouts", "2,2", "--hidden", "16", "--embedding-dim", "8",
        "--candidates", "100", "--eval-entities", "20", "--batch-size", "64"]
MODELS = {"popularity", "buy_again", "buy_again_window", "deep_gnn", "deep_gnn_entity_at_anchor", "distilled"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cj_quality")
    data, run_dir = root / "cj", root / "cj_run"
    assert main(["offline", "dataset", "complete-journey", "--max-rows", str(MAX_ROWS), "--out", str(data)]) == 0
    spec = yaml.safe_load((data / "project.yaml").read_text())
    spec["split"]["test_days"] = 7
    for task in (*spec["base_tasks"], spec["serving"]["task"]):
        task.pop("session")  # specs written before the field: the session column is inferred
    (data / "project.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    common = ["--project", str(data / "project.yaml"), "--run-dir", str(run_dir), "--no-progress"]
    assert main(["offline", "train-deep", *common, *DEEP]) == 0
    assert main(["offline", "embed", *common, "--every-days", "7"]) == 0
    assert main(["offline", "distill", *common, "--threads", "1", "--examples", "100", "--epochs", "1",
                 "--negatives", "16"]) == 0
    assert main(["offline", "quality", *common, "--threads", "1", "--max-examples", "100", "--candidates", "200"]) == 0
    return data / "project.yaml", run_dir


def test_report_models_examples_and_cut(run):
    spec_path, run_dir = run
    report = json.loads((run_dir / "quality" / "quality.json").read_text())
    assert set(report["models"]) == MODELS and (run_dir / "quality" / "quality.png").exists()
    assert report["deep_model"] == str(run_dir / "deep_model.pt")
    for name, m in report["models"].items():  # every scorer ranked the same examples
        assert m["examples"] == report["examples"] == 100, name
        assert 0 <= m["recall@10"] <= m["recall@50"] <= report["candidate_recall_ceiling"] + 1e-12, name
    project = load_project(spec_path)
    ds = load_tables(project)
    cols = RankingColumns.of(project)
    assert cols.session == "basket_id"
    cut = split_instants(project, ds)["test_start_ns"]
    assert report["train_cut_ns"] == cut
    tx = ds.table(cols.facts)
    ex = ranking_examples(tx, cols, cut, int(tx[cols.time].max()) + 1, max_examples=100, seed=0)
    assert report["example_sessions"] == ex[cols.session].tolist() and (ex["session_time"] >= cut).all()
    # nothing any model trained on lies at or after the cut
    assert json.loads((run_dir / "split.json").read_text())["train_cut_ns"] == cut
    distill = json.loads((run_dir / "distill.json").read_text())
    assert distill["examples"] == 100 and distill["example_range_ns"][1] == cut
    lo, hi = distill["example_range_ns"]
    train = ranking_examples(tx, cols, lo, hi, max_examples=100, seed=0)
    assert (train["anchor_time"] < cut).all()


def test_candidate_ceilings(run):
    report = json.loads((run[1] / "quality" / "quality.json").read_text())
    c = report["candidate_ceilings"]
    assert c["sizes"] == [100, 200] and c["examples"] == report["examples"]
    assert set(c["recall"]) == {"catalog_top", "entity_history", "co_occurrence", "union"}
    for n in map(str, c["sizes"]):
        assert all(0 <= c["recall"][s][n] <= 1 for s in c["recall"])
        assert all(c["recall"]["union"][n] >= c["recall"][s][n] for s in c["recall"])
        assert c["mean_size"]["union"][n] <= 3 * int(n)
    assert c["recall"]["catalog_top"]["200"] == pytest.approx(report["candidate_recall_ceiling"])
    assert c["recall"]["union"]["200"] > c["recall"]["catalog_top"]["200"]


def test_model_at_a_snapshot_time_equals_the_embeddings_file(run):
    spec_path, run_dir = run
    project = load_project(spec_path)
    ds = load_tables(project)
    model = DeepModel.load(run_dir / "deep_model.pt")
    table = EmbeddingTable.from_parquet(run_dir / "embeddings.parquet", project.plan)
    anchor = AnchorEmbedder(model, ds, project.spec.serving.task.name)
    cols = RankingColumns.of(project)
    snap = json.loads((run_dir / "embeddings.parquet.json").read_text())["snapshot_times"][-1]
    tx = ds.table(cols.facts)
    ids = np.unique(tx[cols.entity])[:20]
    frame = pd.DataFrame({cols.entity: ids, "anchor_time": np.full(len(ids), snap, np.int64)})
    got, missing = anchor.entity("households", cols.entity)(frame)
    # the plan admits a snapshot at least min_embedding_offset old: look it up from just after that
    want, want_missing = table.lookup("households", ids, np.full(len(ids), snap + project.plan.min_embedding_offset.ns))
    assert not missing.any() and not want_missing.any()
    assert np.abs(got - want).max() <= 1e-5
    items = np.unique(tx[cols.item])[:20]
    got, missing = anchor.item("products")(items, np.full(len(items), snap + 3_600 * 10**9, np.int64))
    want, _ = table.lookup("products", items, np.full(len(items), snap + project.plan.min_embedding_offset.ns))
    assert not missing.any() and np.abs(got - want).max() <= 1e-5


def test_bad_ceiling_sizes_name_the_flag(run, capsys):
    spec_path, run_dir = run
    rc = main(["offline", "quality", "--project", str(spec_path), "--run-dir", str(run_dir), "--no-progress",
               "--candidates", "50", "--ceiling-sizes", "10,100"])
    assert rc == 1 and "--ceiling-sizes: each N in [1, --candidates 50]" in capsys.readouterr().err
