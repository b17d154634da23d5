"""Honest selection and several seeds in `relstream offline quality` of a scoring plan: the
validation split lies before the training period, the distilled model's epoch and configuration
are chosen there (never on the test period: shuffling the test period's labels changes no
choice), per-seed metrics with entity-bootstrap intervals, and the summary of several runs."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from offline.distillation.shallow_model import ScoringConfig
from offline.distillation.trainer import DistillConfig
from offline.evaluate import SplitConfig
from offline.quality.selection import configured, parse_grid, validation_split
from relstream.cli import main

DEEP = ["--epochs", "1", "--max-samples-per-epoch", "500", "--hidden", "16", "--embedding-dim", "8",
        "--fanouts", "5,3,2", "--no-progress", "--threads", "1"]
QUALITY = ["--train-days", "3", "--val-days", "3", "--epochs", "2", "--grid", "lr=1e-3,4e-3", "--seeds", "0,1",
           "--d-model", "16", "--layers", "1", "--threads", "1", "--bootstrap", "30", "--no-progress"]


def test_validation_split_precedes_the_training_period():
    test = SplitConfig(train_start_day=115, train_days=7, delay_days=7, test_days=7)
    val = validation_split(test, 7)
    assert val == SplitConfig(train_start_day=94, train_days=7, delay_days=7, test_days=7)
    assert val.test_start_day == 108 and val.test_end_day == test.train_start_day
    with pytest.raises(ValueError, match="--val-days"):
        validation_split(SplitConfig(10, 3, 7, 7), 3)


def test_grid_is_a_cross_product_of_known_keys():
    grid = parse_grid("lr=1e-3,2e-3; d_model=32,64")
    assert grid == [{"lr": 1e-3, "d_model": 32}, {"lr": 1e-3, "d_model": 64},
                    {"lr": 2e-3, "d_model": 32}, {"lr": 2e-3, "d_model": 64}]
    assert parse_grid(None) == [{}]
    with pytest.raises(ValueError, match="epochs"):
        parse_grid("epochs=1,2")
    with pytest.raises(ValueError, match="d_model"):
        parse_grid("d_model=wide")
    cfg = configured(DistillConfig(model=ScoringConfig()), {"lr": 1e-3, "d_model": 32})
    assert cfg.lr == 1e-3 and cfg.model.d_model == 32 and cfg.model.d_ff == 64


def _shuffle_test_labels(src, dst, seed=0):
    """A copy of the dataset whose test-period labels are permuted (the spec's test period)."""
    shutil.copytree(src, dst)
    path = dst / "transactions.parquet"
    df = pd.read_parquet(path)
    start = pd.Timestamp(yaml.safe_load((dst / "project.yaml").read_text())["split"]["test_start"], tz="UTC").value
    t = df["tx_datetime"]
    test = ((t >= start) & (t < start + 7 * 86_400 * 10**9)).to_numpy()
    labels = df["tx_fraud"].to_numpy().copy()
    labels[test] = np.random.default_rng(seed).permutation(labels[test])
    assert (labels != df["tx_fraud"].to_numpy()).any()
    df["tx_fraud"] = labels
    df.to_parquet(path)
    return dst / "project.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection")
    # 40 days: test from day 26; train days 16-18, validation days 13-15, its train days 3-5
    assert main(["offline", "dataset", "fraud", "--tiny", "--days", "40", "--out", str(root / "data")]) == 0
    spec, run = root / "data" / "project.yaml", root / "run"
    args = ["--project", str(spec), "--run-dir", str(run)]
    assert main(["offline", "train-deep", *args, *DEEP]) == 0
    assert main(["offline", "embed", *args, "--no-progress"]) == 0
    assert main(["offline", "quality", *args, *QUALITY, "--summary-json", str(root / "summary.json")]) == 0
    # the same deep model and embeddings, the test period's labels shuffled
    shuffled = _shuffle_test_labels(root / "data", root / "shuffled")
    run2 = root / "run2"
    run2.mkdir()
    shutil.copy(run / "deep_model.pt", run2 / "deep_model.pt")
    assert main(["offline", "quality", "--project", str(shuffled), "--run-dir", str(run2),
                 "--embeddings", str(run / "embeddings.parquet"), *QUALITY]) == 0
    return root, run, run2


def _report(run):
    return json.loads((run / "quality" / "quality.json").read_text())


def test_choice_is_made_on_the_validation_period_only(runs):
    _, run, run2 = runs
    a, b = _report(run), _report(run2)
    val = a["validation"]
    assert val["validation_period_ns"][1] <= a["train_period_ns"][0]  # over before training starts
    assert val["validation_period_ns"][1] + val["split"]["delay_days"] * 86_400 * 10**9 <= a["test_period_ns"][0]
    assert val["grid"] == [{"lr": 1e-3}, {"lr": 4e-3}] and a["seeds"] == [0, 1]
    assert 0 <= val["deep"]["auc_roc"] <= 1 and val["deep"] == b["validation"]["deep"]
    for e in a["per_seed"]:
        sel = e["selection"]
        assert sel["overrides"] in val["grid"] and 1 <= sel["epoch"] <= 2
        assert len(sel["candidates"]) == 2 and all(len(c["epochs"]) == 2 for c in sel["candidates"])
        best = max(ep["auc_roc"] for c in sel["candidates"] for ep in c["epochs"])
        assert sel["validation"]["auc_roc"] == best
        # retrained on the training period with the chosen configuration, stopped at the chosen epoch
        assert len(e["distill"]["history"]) == sel["epoch"] and e["distill"]["config"]["stop_after"] == sel["epoch"]
        assert e["distill"]["config"]["lr"] == sel["overrides"]["lr"]
    # shuffled test labels: every choice and validation figure identical, the test figures not
    assert [e["selection"] for e in a["per_seed"]] == [e["selection"] for e in b["per_seed"]]
    assert a["models"]["lightgbm"]["auc_roc"] != b["models"]["lightgbm"]["auc_roc"]


def test_seeds_give_mean_sd_and_entity_intervals(runs):
    root, run, _ = runs
    report = _report(run)
    per = [e["models"] for e in report["per_seed"]]
    for name in ("deep", "distilled", "lightgbm"):
        vals = [m[name]["auc_roc"] for m in per]
        assert report["models"][name]["auc_roc"] == pytest.approx(np.mean(vals))
        assert report["models"][name]["auc_roc_sd"] == pytest.approx(np.std(vals, ddof=1))
        for e in report["per_seed"]:
            lo, hi = e["bootstrap"]["ci95"][name]["auc_roc"]
            assert lo <= e["models"][name]["auc_roc"] <= hi
            assert e["bootstrap"]["unit"] == "entity"
    assert {e["seed"] for e in report["per_seed"]} == {0, 1}
    summary = json.loads((root / "summary.json").read_text())
    assert summary == json.loads((run / "quality" / "scoring_quality.json").read_text())
    assert set(summary) == {"split", "seeds", "models"}
    assert summary["seeds"] == [{"run": str(run), "data_seed": 0, "model_seed": s} for s in (0, 1)]
    for name, m in summary["models"].items():
        assert m["auc"] == report["models"][name]["auc_roc"] and m["auc_sd"] == report["models"][name]["auc_roc_sd"]
        assert m["ap"] == report["models"][name]["average_precision"]
        assert m["cp100"] == report["models"][name]["entity_precision@100"]
    assert (run / "quality" / "seeds.png").read_bytes()[:4] == b"\x89PNG"


def test_quality_summary_merges_runs(runs, tmp_path, capsys):
    _, run, run2 = runs
    out = tmp_path / "all.json"
    assert main(["offline", "quality-summary", str(run), str(run2), "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    per = [e["models"]["distilled"]["average_precision"] for r in (run, run2) for e in _report(r)["per_seed"]]
    assert len(summary["seeds"]) == 4 and summary["models"]["distilled"]["ap"] == pytest.approx(np.mean(per))
    assert summary["models"]["distilled"]["ap_sd"] == pytest.approx(np.std(per, ddof=1))
    assert summary["split"]["test_rows"] == [_report(run)["test_rows"], _report(run2)["test_rows"]]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # runs of different splits do not mix
    other = _report(run2)
    other["split"]["train_days"] = 5
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["offline", "quality-summary", str(run), str(tmp_path / "other.json"), "--out", str(out)]) != 0
    assert "split" in capsys.readouterr().err


def test_quality_names_a_validation_period_that_does_not_fit(runs, capsys):
    root, run, _ = runs
    assert main(["offline", "quality", "--project", str(root / "data" / "project.yaml"), "--run-dir", str(run),
                 "--train-days", "7", "--val-days", "7", "--no-progress"]) != 0
    assert "--val-days" in capsys.readouterr().err
