"""End to end through the CLI for any project: dataset -> check -> train-deep -> embed, on the
bank (a schema of its own: six tables, two fact tables), fraud and a next-item shop; plus
reproducibility, the embeddings.parquet contract and the command errors."""
import json
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline.cli import main
from offline.data.spec import load_project
from offline.embeddings import EmbeddingTable
from tests.offline.schemas_for_tests import shop_project

SMALL = ["--hidden", "16", "--embedding-dim", "8", "--fanouts", "5,3,2", "--batch-size", "128", "--epochs", "1",
         "--max-samples-per-epoch", "1000", "--no-progress"]


def test_bank_files_to_embeddings_in_well_under_a_minute(tmp_path):
    # CPU time: wall time on the shared machine mostly measures the other processes
    t0 = time.process_time()
    out = tmp_path / "bank"
    assert main(["offline", "dataset", "bank", "--tiny", "--out", str(out)]) == 0
    spec = out / "project.yaml"
    assert main(["offline", "check", "--project", str(spec)]) == 0
    assert main(["offline", "train-deep", "--project", str(spec), *SMALL]) == 0
    assert main(["offline", "embed", "--project", str(spec), "--every-days", "7", "--no-progress"]) == 0
    elapsed = time.process_time() - t0
    assert elapsed < 40, elapsed
    run = out / "runs" / "bank"
    metrics = json.loads((run / "deep_metrics.json").read_text())
    assert set(metrics["validation"]) == {"account_fraud_7d", "payment_fraud"}
    assert metrics["validation"]["payment_fraud"]["n"] > 0
    split = json.loads((run / "split.json").read_text())
    assert split["train_cut_ns"] == split["test_start_ns"] < split["data_end_ns"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["steps"]) == {"train-deep", "embed"}
    for step in manifest["steps"].values():
        assert {"inputs", "config", "git_commit", "metrics", "outputs"} <= set(step)
    # every entity type an embedding key of the plan points to, readable with the plan's rule
    project = load_project(spec)
    table = pq.read_table(run / "embeddings.parquet")
    assert set(table.column("entity_type").to_pylist()) == {"accounts", "merchants"}
    emb = EmbeddingTable.from_parquet(run / "embeddings.parquet", project.plan)
    snaps = json.loads((run / "embeddings.parquet.json").read_text())["snapshot_times"]
    vecs, missing = emb.lookup("accounts", [5000, 5001], [snaps[-1] + 86_400 * 10**9] * 2)
    assert not missing.any() and vecs.shape == (2, 8) and np.isfinite(vecs).all()


@pytest.fixture(scope="module")
def fraud_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fraud")
    assert main(["offline", "dataset", "fraud", "--tiny", "--out", str(out), "--test-start", "2018-04-24"]) == 0
    assert main(["offline", "train-deep", "--project", str(out / "project.yaml"), *SMALL]) == 0
    assert main(["offline", "embed", "--project", str(out / "project.yaml"), "--first-day", "20", "--last-day", "22",
                 "--no-progress"]) == 0
    return out / "runs" / "fraud"


def test_embeddings_parquet_contract(fraud_run):
    path = fraud_run / "embeddings.parquet"
    table = pq.read_table(path)
    assert table.schema.names == ["entity_type", "entity_id", "snapshot_time", "embedding"]
    assert table.schema.field("entity_type").type == pa.string()
    assert table.schema.field("entity_id").type == pa.int64()
    assert table.schema.field("snapshot_time").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    side = json.loads((fraud_run / "embeddings.parquet.json").read_text())
    assert side["dim"] == 8 and len(side["snapshot_times"]) == 3 and side["layout"] == "embedding"
    assert json.loads(table.schema.metadata[b"relstream"])["dim"] == 8
    assert pq.ParquetFile(path).metadata.num_row_groups == 3 * 2  # one per (snapshot, entity type)
    df = table.to_pandas()
    assert set(df["entity_type"]) == {"customers", "terminals"}
    assert not df.duplicated(["entity_type", "entity_id", "snapshot_time"]).any()
    assert table.num_rows == side["rows"] == 3 * (50 + 100)
    vec = np.stack(df["embedding"].to_numpy())
    assert np.isfinite(vec).all() and vec.std() > 0
    from schemas.plan_loading import builtin_plan

    day0 = np.datetime64("2018-04-01").astype("datetime64[ns]").astype(np.int64)
    emb = EmbeddingTable.from_parquet(path, builtin_plan("fraud"))
    vecs, missing = emb.lookup("customers", [0, 1], [day0 + 22 * 86_400 * 10**9 + 13 * 3600 * 10**9] * 2)
    assert not missing.any() and vecs.shape == (2, 8)


def test_training_is_reproducible(fraud_run):
    metrics = json.loads((fraud_run / "deep_metrics.json").read_text())
    spec = fraud_run.parent.parent / "project.yaml"
    again = fraud_run.parent / "again"
    assert main(["offline", "train-deep", "--project", str(spec), "--run-dir", str(again), *SMALL]) == 0
    second = json.loads((again / "deep_metrics.json").read_text())
    assert second["history"] == metrics["history"] and second["validation"] == metrics["validation"]


def test_next_item_embeddings_carry_the_pair_score(tmp_path):
    """Shop (next item): household vector . product vector == the model's pair score (bias included)."""
    import torch

    from offline.data.sources import load_tables
    from offline.models.train import DeepModel
    from offline.relgraph.graph import build_graph

    spec = shop_project(tmp_path / "shop")
    assert main(["offline", "train-deep", "--project", str(spec), *SMALL]) == 0
    assert main(["offline", "embed", "--project", str(spec), "--every-days", "7", "--no-progress"]) == 0
    run = tmp_path / "shop" / "runs" / "shop"
    val = json.loads((run / "deep_metrics.json").read_text())["validation"]["next_products"]
    assert 0 <= val["recall@10"] <= val["recall@50"] <= 1
    side = json.loads((run / "embeddings.parquet.json").read_text())
    assert side["layout"] == "pair_bias" and side["dim"] == 9
    project = load_project(spec)
    ds = load_tables(project)
    g = build_graph(ds)
    model = DeepModel.load(run / "deep_model.pt")
    feats = model.features(ds, g)
    t = side["snapshot_times"][-1]
    df = pq.read_table(run / "embeddings.parquet").to_pandas()
    at = df[df["snapshot_time"] == t]
    hh = np.stack(at[at.entity_type == "households"]["embedding"].to_numpy())[:5]
    pr = np.stack(at[at.entity_type == "products"]["embedding"].to_numpy())[:7]
    eh = model.embed(g, feats, "households", np.arange(5), np.full(5, t))
    ep = model.embed(g, feats, "products", np.arange(7), np.full(7, t))
    bias = model.net.head("next_products", torch.from_numpy(ep)).detach().numpy()
    np.testing.assert_allclose(hh @ pr.T, eh @ ep.T + bias[None, :], rtol=1e-4, atol=1e-4)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    def fails(argv, pattern):
        assert main(argv) == 1
        assert re.search(pattern, capsys.readouterr().err)

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntables: {}\nbase_tasks: []\n")
    fails(["offline", "train-deep", "--project", str(bad)], r"--project .*bad.yaml: base_tasks: .*at least 1")
    spec = shop_project(tmp_path / "shop")
    fails(["offline", "embed", "--project", str(spec)], "--model")
    import torch

    if not torch.cuda.is_available():
        fails(["offline", "train-deep", "--project", str(spec), "--device", "cuda"], "--device cuda: no CUDA device")
