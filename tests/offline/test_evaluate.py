"""Evaluation harness: entity precision@k, metrics and the time split."""
import numpy as np
import pandas as pd
import pytest

from offline.datasets.base import NS_PER_DAY
from offline.evaluate import SplitConfig, entity_precision_at_k, plot_roc_pr, scoring_metrics, time_split

H = 3600 * 10**9
DAY0 = 1_522_540_800 * 10**9  # 2018-04-01T00:00Z


def test_entity_precision_by_hand():
    # day 0: A max 0.9 (fraud), B 0.8 (no), C 0.7 (fraud); day 1: B 0.95 (fraud), C 0.3 (fraud), A 0.2 (no)
    cust = ["A", "A", "B", "C", "A", "B", "C"]
    day = [0, 0, 0, 0, 1, 1, 1]
    score = [0.9, 0.1, 0.8, 0.7, 0.2, 0.95, 0.3]
    y = [0, 1, 0, 1, 0, 1, 1]  # A's fraud is its low-score tx: the card still counts as compromised
    # k=2: day 0 top A, B -> A detected; day 1 (A out) top B, C -> both positive
    assert entity_precision_at_k(y, score, cust, day, k=2) == pytest.approx((1 / 2 + 2 / 2) / 2)
    # k=3: day 0 top A, B, C -> A and C detected; day 1 ranks B only -> 1 of 3
    assert entity_precision_at_k(y, score, cust, day, k=3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert entity_precision_at_k(y, score, cust, day, k=3, remove_detected=False) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert entity_precision_at_k(y, score, cust, day, k=1) == pytest.approx((1 + 1) / 2)
    # Fewer cards than k: still divided by k.
    assert entity_precision_at_k([1], [0.5], ["A"], [0], k=4) == pytest.approx(0.25)


def test_entity_precision_drops_entities_detected_on_earlier_days():
    # A is positive on days 0, 1, 2 with the top score; B positive on day 1 only, second score;
    # C positive on day 2 only, lowest score; a non-detected positive (B on day 0: not in top 1)
    # stays in the ranking.
    cust = ["A", "B", "C"] * 3
    day = [0] * 3 + [1] * 3 + [2] * 3
    score = [0.9, 0.5, 0.1] * 3
    y = [1, 1, 0, 1, 1, 0, 1, 0, 1]
    # k=1 published: day 0 A; day 1 (A out) B; day 2 (A, B out) C -> 1, 1, 1
    assert entity_precision_at_k(y, score, cust, day, k=1) == pytest.approx(1.0)
    # lenient: A every day -> 1, 1, 1 too; k=2 separates them:
    # published: day 0 A, B (both detected); day 1: C only (0 of 2); day 2: C (1 of 2)
    assert entity_precision_at_k(y, score, cust, day, k=2) == pytest.approx((2 / 2 + 0 / 2 + 1 / 2) / 3)
    # lenient: day 0 A, B (2); day 1 A, B (2); day 2 A, B (1)
    assert entity_precision_at_k(y, score, cust, day, k=2, remove_detected=False) == pytest.approx((1 + 1 + 1 / 2) / 3)
    m = scoring_metrics(y, score, cust, day, k=2)
    assert m["entity_precision@2"] == pytest.approx(0.5) and m["entity_precision_lenient@2"] == pytest.approx(5 / 6)
    # days are taken in time order whatever the row order
    rev = slice(None, None, -1)
    assert entity_precision_at_k(y[rev], score[rev], cust[rev], day[rev], k=2) == pytest.approx(0.5)


def test_scoring_metrics_by_hand():
    m = scoring_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [1, 2, 3, 4], [0, 0, 0, 0], k=2)
    assert m["auc_roc"] == pytest.approx(0.75)
    assert m["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["entity_precision@2"] == pytest.approx(0.5)
    assert m["n"] == 4 and m["n_positive"] == 2


NAMES = {"time": "tx_datetime", "label": "tx_fraud", "entity": "customer_id"}


def _tx(rows):
    df = pd.DataFrame(rows, columns=["customer_id", "terminal_id", "hours", "tx_amount", "tx_fraud"])
    df["tx_datetime"] = DAY0 + (df.pop("hours") * H).astype(np.int64)
    df["transaction_id"] = np.arange(len(df))
    return df


def test_time_split_removes_known_compromised_cards():
    cfg = SplitConfig(train_start_day=0, train_days=3, delay_days=2, test_days=2)  # test days 5, 6
    tx = _tx([
        ("X", 1, 24 + 1, 10.0, 1),  # fraud in training: known on both test days
        ("Y", 1, 3 * 24 + 1, 10.0, 1),  # fraud on day 3 (delay period): known from day 6 on
        ("X", 1, 5 * 24 + 1, 10.0, 0), ("Y", 1, 5 * 24 + 2, 10.0, 0), ("Z", 1, 5 * 24 + 3, 10.0, 1),
        ("X", 1, 6 * 24 + 1, 10.0, 0), ("Y", 1, 6 * 24 + 2, 10.0, 0), ("Z", 1, 6 * 24 + 3, 10.0, 1),
        ("W", 1, 8 * 24, 10.0, 0),
    ])
    split = time_split(tx, cfg, day0_ns=DAY0, **NAMES)
    assert list(split.train["customer_id"]) == ["X"]
    days = (split.test["tx_datetime"] - DAY0) // NS_PER_DAY
    assert sorted(zip(days, split.test["customer_id"])) == [(5, "Y"), (5, "Z"), (6, "Z")]
    assert split.removed_known_compromised == 3
    with pytest.raises(ValueError, match="empty test"):
        time_split(tx, SplitConfig(0, 3, 20, 2), day0_ns=DAY0, **NAMES)


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    plot_roc_pr({"a": (y, y + rng.normal(0, 1, 200)), "b": (y, rng.normal(0, 1, 200))}, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
