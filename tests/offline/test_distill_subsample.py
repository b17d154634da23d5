"""`--max-train-rows`: a seeded uniform subsample of the distillation training rows."""
import numpy as np
import pytest

from offline.distillation.replay import replay_rows
from offline.distillation.trainer import DistillConfig, subsample_indices, train_shallow
from offline.embeddings import EmbeddingTable, random_embeddings
from offline.distillation.shallow_model import ScoringConfig
from relstream.cli import main as relstream_main
from schemas.plan_loading import builtin_plan


def test_subsample_is_seeded_sorted_unique_and_sized():
    a = subsample_indices(1000, 100, seed=3)
    assert len(a) == 100 and len(np.unique(a)) == 100
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    np.testing.assert_array_equal(a, subsample_indices(1000, 100, seed=3))
    assert not np.array_equal(a, subsample_indices(1000, 100, seed=4))


@pytest.mark.parametrize("max_rows", [None, 1000, 5000])
def test_subsample_keeps_all_rows_when_not_smaller(max_rows):
    np.testing.assert_array_equal(subsample_indices(1000, max_rows, seed=0), np.arange(1000))


def test_subsample_rejects_non_positive_size():
    with pytest.raises(ValueError, match="max_train_rows"):
        subsample_indices(10, 0, seed=0)


def _tiny_rows(tmp_path):
    from offline.datasets.fraud import TINY, generate_transactions, write_transactions
    from offline.datasets.loader import load_transactions

    plan = builtin_plan("fraud")
    write_transactions(generate_transactions(TINY), str(tmp_path / "tx.parquet"))
    tx = load_transactions(tmp_path / "tx.parquet").table("transactions")
    mask = np.zeros(len(tx), bool)
    mask[-200:] = True
    rows = replay_rows(plan, tx, score_mask=mask, progress=False)
    ns = 86_400 * 10**9
    snaps = np.arange(tx["tx_datetime"].min() // ns, tx["tx_datetime"].max() // ns + 2) * ns
    table = EmbeddingTable.from_arrays(plan, *random_embeddings(
        plan, {"customers": tx["customer_id"].unique(), "terminals": tx["terminal_id"].unique()}, snaps, dim=4))
    y = tx["tx_fraud"].to_numpy(np.float32)[rows.row_index]
    return rows, y, table


def test_train_shallow_uses_only_the_subsample(tmp_path):
    rows, y, table = _tiny_rows(tmp_path)
    cfg = DistillConfig(epochs=1, batch_size=32, max_train_rows=64, seed=1,
                        model=ScoringConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32))
    logs = []
    _, info = train_shallow(rows, table, cfg, labels=y, soft_labels=np.full(len(rows), 0.5, np.float32), progress=False,
                            log=logs.append)
    assert info["rows"] == 64 and info["rows_available"] == len(rows) == 200
    assert info["positives"] == int(y[subsample_indices(200, 64, seed=1)].sum())
    assert any("64 of 200" in m for m in logs)
    _, info_all = train_shallow(rows, table, DistillConfig(epochs=1, batch_size=64, model=cfg.model), labels=y,
                                progress=False, log=logs.append)
    assert info_all["rows"] == info_all["rows_available"] == 200


@pytest.mark.parametrize("flag,value", [("--max-train-rows", "0"), ("--soft-weight", "1.5")])
def test_cli_rejects_bad_distillation_flags_before_loading(tmp_path, capsys, flag, value):
    from offline.datasets.synthetic_bank import TINY_BANK, write_bank_project

    spec = write_bank_project(tmp_path / "bank", TINY_BANK)
    for cmd in ("distill", "quality"):
        code = relstream_main(["offline", cmd, "--project", str(spec), "--run-dir", str(tmp_path / "nothing"),
                               flag, value, "--no-progress"])
        assert code != 0
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()  # failed before touching the run directory
