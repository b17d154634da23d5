"""`relstream offline distill | export --project` on the tiny fraud project (quality:
tests/offline/test_quality_scoring.py).

The deep model's training is stage 1's business (and slow); here one short epoch of the generic
deep model and its real ``embed`` output stand in, so the test exercises every step of stage 2:
point-in-time rows, training, metrics, export of the trained model and equality of the bundle's scores with the offline scores.
"""
import json

import numpy as np
import pytest

from offline.data.sources import load_tables
from offline.data.spec import load_project
from relstream.cli import main as relstream_main


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    out = tmp_path_factory.mktemp("fraud")
    assert relstream_main(["offline", "dataset", "fraud", "--tiny", "--out", str(out)]) == 0
    spec = out / "project.yaml"
    run = ["--project", str(spec), "--run-dir", str(out), "--no-progress"]
    assert relstream_main(["offline", "train-deep", *run, "--epochs", "1", "--max-samples-per-epoch", "500",
                           "--hidden", "16", "--embedding-dim", "8"]) == 0
    assert relstream_main(["offline", "embed", *run]) == 0
    return spec


@pytest.fixture(scope="module")
def run_dir(project):
    return project.parent


def args(project, *more):
    return ["--project", str(project), "--run-dir", str(project.parent), "--no-progress", *more]


def test_distill_then_export_matches_offline_scores(project, run_dir, tmp_path):
    from offline.export.bundle import load_bundle, split_scores
    from offline.distillation.replay import replay_rows
    from offline.embeddings import EmbeddingTable
    from offline.distillation.trainer import MODEL_FILE, load_model
    from offline.distillation.shallow_model import serve
    from schemas.plan_loading import builtin_plan

    code = relstream_main(["offline", "distill", *args(project, "--epochs", "1", "--d-model", "32", "--layers", "1")])
    assert code == 0
    report = json.loads((run_dir / "distill.json").read_text())
    assert 0.0 <= report["metrics"]["auc_roc"] <= 1.0 and report["metrics"]["n"] > 0
    assert report["train"]["parameters"] > 0 and report["config"]["soft_weight"] == 0.0
    # the training days end one label delay (7 days) before the project's test start
    assert report["split"]["train_days"] == 7 and report["split"]["delay_days"] == 7
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "distill" in manifest["steps"]

    repo = tmp_path / "repo"
    assert relstream_main(["offline", "export", *args(project, "--repo", str(repo))]) == 0
    vdir = repo / "relstream" / "1"
    bundle_manifest = json.loads((vdir / "manifest.json").read_text())
    assert bundle_manifest["trained"] is True and "auc_roc" in bundle_manifest["metrics"]
    assert bundle_manifest["training_data_range"]["split"] == report["split"]

    plan = builtin_plan("fraud")
    tx = load_tables(load_project(project)).table("transactions")
    mask = np.zeros(len(tx), bool)
    mask[-30:] = True
    rows = replay_rows(plan, tx, score_mask=mask, progress=False)
    requests = [rows.request(i) for i in range(len(rows))]
    bundle_scores = np.concatenate([o["score"].reshape(-1) for o in split_scores(load_bundle(vdir), requests)])
    model = load_model(run_dir / MODEL_FILE, plan)
    table = EmbeddingTable.from_parquet(run_dir / "embeddings.parquet", plan)
    served = serve(model, plan, rows.batch(np.arange(len(rows))), table)
    offline_scores, cold = served["score"], served["cold_start"]
    np.testing.assert_allclose(bundle_scores, offline_scores, atol=1e-6)
    assert cold.shape == (30, 2) and not cold.all()  # real rows find admissible embeddings


def test_trained_export_answers_real_rows_on_triton(project, run_dir, stack):
    """The distilled model of this run, exported and checked on the real Triton with real rows."""
    from offline.distillation.trainer import MODEL_FILE

    if not (run_dir / MODEL_FILE).exists():
        assert relstream_main(["offline", "distill", *args(project, "--epochs", "1", "--d-model", "32",
                                                           "--layers", "1")]) == 0
    code = relstream_main(["offline", "export", *args(project, "--repo", str(stack.model_repository),
                                                      "--model-name", "relstream_trained", "--check", "--triton-http",
                                                      stack.triton_http_url, "--triton-grpc", stack.triton_grpc_url)])
    assert code == 0
    vdir = max((stack.model_repository / "relstream_trained").glob("[0-9]*"), key=lambda p: int(p.name))
    assert json.loads((vdir / "manifest.json").read_text())["trained"] is True


def test_distill_rows_by_duckdb_equal_the_replay(project, run_dir):
    """The default engine (DuckDB for this plan) and the replay give the same rows, hence the same
    trained model and test metrics."""
    metrics = {}
    for engine in ("replay", "auto"):
        assert relstream_main(["offline", "distill", *args(project, "--epochs", "1", "--d-model", "16",
                                                           "--layers", "1", "--engine", engine)]) == 0
        metrics[engine] = json.loads((run_dir / "distill.json").read_text())["metrics"]
    assert (run_dir / "rows" / "_rows.json").exists()  # auto chose the SQL engine
    assert metrics["auto"] == metrics["replay"]
