"""Paired bootstrap intervals of the quality report."""
import numpy as np

from offline.quality.scoring import auc_bootstrap


def test_bootstrap_separates_a_good_from_a_random_scorer():
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.1).astype(int)
    good = y + rng.normal(0, 0.7, len(y))
    noise = rng.random(len(y))
    out = auc_bootstrap(y, {"good": good, "noise": noise}, [("good", "noise")], n=100, seed=1)
    lo, hi = out["auc_ci95"]["good"]
    assert 0.8 < lo < hi < 0.95
    lo_n, hi_n = out["auc_ci95"]["noise"]
    assert 0.4 < lo_n < hi_n < 0.6  # a random scorer: near 0.5
    d_lo, d_hi = out["auc_diff_ci95"]["good-noise"]
    assert d_lo > 0.25 and d_hi > d_lo
    assert out["resamples"] == 100


def test_bootstrap_of_identical_scorers_has_zero_difference():
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.2).astype(int)
    s = rng.random(500) + y
    out = auc_bootstrap(y, {"a": s, "b": s.copy()}, [("a", "b")], n=50, seed=0)
    assert out["auc_diff_ci95"]["a-b"] == [0.0, 0.0]
    assert out == auc_bootstrap(y, {"a": s, "b": s.copy()}, [("a", "b")], n=50, seed=0)  # seeded
