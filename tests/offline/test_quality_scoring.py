"""`relstream offline quality` of scoring plans: the project's trained deep model at request time
vs the distilled model vs LightGBM on engineered features, on the tiny fraud project (run
directory apart from the spec, embeddings of a day range only, as a published-scale run) and on
the bank (its deep model without a fact-label head: a head fitted on frozen features)."""
import json
import shutil

import numpy as np
import pytest
import yaml

from offline.data.sources import load_tables, split_instants
from offline.data.spec import load_project
from offline.datasets.base import NS_PER_DAY
from offline.quality.deep import DeepRequestScorer
from relstream.cli import main

DEEP = ["--epochs", "1", "--max-samples-per-epoch", "500", "--hidden", "16", "--embedding-dim", "8",
        "--fanouts", "5,3,2", "--no-progress"]
SHALLOW = ["--epochs", "1", "--d-model", "16", "--layers", "1", "--threads", "1", "--no-progress", "--val-days", "0",
           "--bootstrap", "20"]


def _train(spec, run, *embed):
    args = ["--project", str(spec), "--run-dir", str(run)]
    assert main(["offline", "train-deep", *args, *DEEP]) == 0
    assert main(["offline", "embed", *args, "--no-progress", *embed]) == 0


@pytest.fixture(scope="module")
def fraud(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    assert main(["offline", "dataset", "fraud", "--tiny", "--out", str(root / "data")]) == 0
    spec, run = root / "data" / "project.yaml", root / "run"
    # the train period starts on day 2 and the test period ends on day 22: snapshots of that range
    _train(spec, run, "--first-day", "1", "--last-day", "22")
    return spec, run


def _check_report(report: dict, spec, run) -> None:
    assert set(report["models"]) == {"deep", "distilled", "lightgbm"}
    assert {m["n"] for m in report["models"].values()} == {report["test_rows"]}
    for m in report["models"].values():
        assert 0.0 <= m["auc_roc"] <= 1.0 and "entity_precision@100" in m
    assert report["latency"]["distilled_ms_p50"] > 0 and report["latency"]["deep_ms_p50"] > 0
    for name in ("quality.json", "roc_pr.png", "metrics.png", "shallow_model.pt"):
        assert (run / "quality" / name).stat().st_size > 0
    # no test-period row in training: every training row ends a label delay before the test start
    project = load_project(spec)
    fact = load_tables(project).table(project.plan.fact_table)
    t = fact[project.plan.fact.time_column].to_numpy(np.int64)
    scores = np.load(run / "quality" / "test_scores.npz")
    test_lo, test_hi = report["test_period_ns"]
    delay = report["split"]["delay_days"] * NS_PER_DAY
    assert test_lo == split_instants(project, load_tables(project))["test_start_ns"]
    assert len(scores["row_index"]) == report["test_rows"]
    assert ((t[scores["row_index"]] >= test_lo) & (t[scores["row_index"]] < test_hi)).all()
    assert (t[scores["train_row_index"]] < test_lo - delay).all()
    assert not set(scores["train_row_index"]) & set(scores["row_index"])
    assert len(scores["train_row_index"]) == report["train_rows"] > 0


def test_fraud_quality_compares_three_models_on_the_same_rows(fraud):
    spec, run = fraud
    before = (run / "deep_model.pt").read_bytes()
    assert main(["offline", "quality", "--project", str(spec), "--run-dir", str(run), *SHALLOW]) == 0
    report = json.loads((run / "quality" / "quality.json").read_text())
    _check_report(report, spec, run)
    assert report["deep_head"] == {"task": "tx_fraud"}  # the project's fact-label head, as trained
    assert (run / "deep_model.pt").read_bytes() == before  # quality trains no deep model
    assert report["split"]["train_days"] == 7 and report["entity"] == "customer_id"
    assert "terminal_id_tx_fraud_rate_7d" in report["models"]["lightgbm"]["features"]
    assert "quality" in json.loads((run / "manifest.json").read_text())["steps"]


def test_quality_names_the_missing_step(fraud, tmp_path, capsys):
    spec, run = fraud
    empty = tmp_path / "run"
    assert main(["offline", "quality", "--project", str(spec), "--run-dir", str(empty), *SHALLOW]) != 0
    assert "relstream offline train-deep --project" in capsys.readouterr().err
    empty.mkdir(exist_ok=True)
    shutil.copy(run / "deep_model.pt", empty / "deep_model.pt")
    assert main(["offline", "quality", "--project", str(spec), "--run-dir", str(empty), *SHALLOW]) != 0
    assert "relstream offline embed --project" in capsys.readouterr().err


def test_request_time_scores_use_only_what_was_known(fraud):
    """A row scored on the whole data equals the same row scored on the data as known just after
    it (``upto``: later rows gone, labels younger than their delay masked)."""
    spec, run = fraud
    project = load_project(spec)
    ds = load_tables(project)
    table = project.plan.fact_table
    t = ds.table(table)[project.plan.fact.time_column].to_numpy(np.int64)
    full = DeepRequestScorer.from_files(run / "deep_model.pt", project, ds, table, "tx_fraud")
    for i in np.linspace(len(t) // 2, len(t) - 1, 4).astype(int):
        cut = DeepRequestScorer(full.model, project, ds.upto(int(t[i]) + 1), table, "tx_fraud")
        assert cut.score(np.array([i]), t[i:i + 1]) == pytest.approx(full.score(np.array([i]), t[i:i + 1]), abs=1e-6)


def test_bank_quality_fits_a_head_without_a_fact_label_task(tmp_path):
    assert main(["offline", "dataset", "bank", "--tiny", "--out", str(tmp_path / "bank")]) == 0
    spec = tmp_path / "bank" / "project.yaml"
    raw = yaml.safe_load(spec.read_text())
    raw["base_tasks"] = [t for t in raw["base_tasks"] if t["kind"] != "fact_label"]
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = tmp_path / "run"
    _train(spec, run, "--every-days", "1")
    assert main(["offline", "quality", "--project", str(spec), "--run-dir", str(run), "--train-days", "3",
                 *SHALLOW]) == 0
    report = json.loads((run / "quality" / "quality.json").read_text())
    _check_report(report, spec, run)
    assert report["deep_head"]["rows"] == report["train_rows"]  # fitted on the train period
    assert (run / "quality" / "deep_head.pt").exists()
    assert report["fact_table"] == "card_payments" and report["label"] == "is_fraud"
