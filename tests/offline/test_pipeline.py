"""Tiny end to end through the CLI: generate -> train-deep -> embed -> evaluate, plus
reproducibility of training and the embeddings.parquet contract."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline.cli import main
from offline.datasets.base import NS_PER_DAY
from offline.datasets.fraud import TINY, generate_dataset
from offline.deep_model import DeepModelConfig
from offline.evaluate import SplitConfig
from offline.train_deep import TrainConfig, train

SMALL = ["--hidden", "16", "--embedding-dim", "8", "--heads", "2", "--fanouts", "5,3", "--batch-size", "128"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["offline", "generate", "--run-dir", str(run), "--tiny", "--no-progress"]) == 0
    assert main(["offline", "train-deep", "--run-dir", str(run), "--epochs", "1", "--no-progress",
                 "--train-start-day", "8", "--warmup-days", "3", *SMALL]) == 0
    assert main(["offline", "embed", "--run-dir", str(run), "--first-day", "20", "--last-day", "22",
                 "--no-progress"]) == 0
    assert main(["offline", "evaluate", "--run-dir", str(run), "--train-start-day", "8"]) == 0
    return run


def test_embeddings_parquet_contract(run):
    path = run / "embeddings.parquet"
    table = pq.read_table(path)
    assert table.schema.names == ["entity_type", "entity_id", "snapshot_time", "embedding"]
    assert table.schema.field("entity_type").type == pa.string()
    assert table.schema.field("entity_id").type == pa.int64()
    assert table.schema.field("snapshot_time").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    side = json.loads((run / "embeddings.parquet.json").read_text())
    assert side["dim"] == 8 and len(side["snapshot_times"]) == 3
    assert json.loads(table.schema.metadata[b"relstream"])["dim"] == 8
    from offline.datasets.loader import load_transactions

    ds = load_transactions(run / "transactions.parquet")  # entities = those seen in the file
    n_cust, n_term = len(ds.table("customers")), len(ds.table("terminals"))
    assert table.num_rows == 3 * (n_cust + n_term) == side["rows"]
    assert pq.ParquetFile(path).metadata.num_row_groups == 3 * 2  # one per (snapshot, entity type)
    df = table.to_pandas()
    assert set(df["entity_type"]) == {"customers", "terminals"}
    day0 = np.datetime64(TINY.start_date).astype("datetime64[ns]").astype(np.int64)
    assert sorted(df["snapshot_time"].unique()) == [day0 + d * NS_PER_DAY for d in (20, 21, 22)]
    assert not df.duplicated(["entity_type", "entity_id", "snapshot_time"]).any()
    vec = np.stack(df["embedding"].to_numpy())
    assert np.isfinite(vec).all() and vec.std() > 0
    # Stage 2 reads it with the plan's point-in-time rule.
    from offline.embeddings import EmbeddingTable
    from schemas.plan import builtin_plan

    emb = EmbeddingTable.from_parquet(path, builtin_plan("fraud"))
    vecs, missing = emb.lookup("customers", [0, 1], [day0 + 22 * NS_PER_DAY + 13 * 3600 * 10**9] * 2)
    assert not missing.any() and vecs.shape == (2, 8)


def test_manifest_and_reports(run):
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["steps"]) == {"generate", "train-deep", "embed", "evaluate"}
    for step in manifest["steps"].values():
        assert {"inputs", "config", "seed", "git_commit", "metrics", "outputs"} <= set(step)
    train_metrics = manifest["steps"]["train-deep"]["metrics"]
    assert set(train_metrics["validation"]) == {"customers", "terminals"}
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert set(report["models"]) == {"lightgbm", "lightgbm+deep_embeddings"}
    for m in report["models"].values():
        assert 0 <= m["auc_roc"] <= 1 and 0 <= m["card_precision@100"] <= 1
    assert (run / "evaluation" / "roc_pr.png").stat().st_size > 1000


def test_cli_errors_name_the_problem(run, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT\n1,2018-04-01 00:00:00,1,1,1.0\n")
    with pytest.raises(Exception, match="column TX_FRAUD: missing"):
        main(["offline", "train-deep", "--run-dir", str(tmp_path / "r"), "--transactions", str(bad)])
    with pytest.raises(Exception, match="--model"):
        main(["offline", "embed", "--run-dir", str(tmp_path / "empty")])


def test_training_is_reproducible():
    ds = generate_dataset(TINY)
    cfg = TrainConfig(split=SplitConfig(8, 7, 7, 7), warmup_days=3, fanouts=(4, 3), epochs=1, batch_size=64,
                      max_val_samples=300, model=DeepModelConfig(hidden=8, embedding_dim=4, heads=1, time_dim=2))
    _, a = train(ds, cfg, progress=False, log=lambda *_: None)
    _, b = train(ds, cfg, progress=False, log=lambda *_: None)
    assert a["history"] == b["history"] and a["validation"] == b["validation"]
    from dataclasses import replace

    _, c = train(ds, replace(cfg, seed=1), progress=False, log=lambda *_: None)
    assert c["history"] != a["history"]
