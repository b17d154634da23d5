"""Paired entity-bootstrap intervals of the quality report."""
import numpy as np
import pytest

from offline.evaluate import entity_bootstrap, scoring_metrics


def _data(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)
    return rng, y, rng.integers(0, n // 4, n), rng.integers(0, 7, n)


def test_bootstrap_separates_a_good_from_a_random_scorer():
    rng, y, ent, day = _data()
    good = y + rng.normal(0, 0.7, len(y))
    noise = rng.random(len(y))
    out = entity_bootstrap(y, {"good": good, "noise": noise}, ent, day, [("good", "noise")], n=100, seed=1)
    lo, hi = out["ci95"]["good"]["auc_roc"]
    assert 0.8 < lo < hi < 0.95
    lo_n, hi_n = out["ci95"]["noise"]["auc_roc"]
    assert 0.4 < lo_n < hi_n < 0.6  # a random scorer: near 0.5
    d_lo, d_hi = out["diff_ci95"]["good-noise"]["auc_roc"]
    assert d_lo > 0.25 and d_hi > d_lo
    assert out["diff_ci95"]["good-noise"]["average_precision"][0] > 0
    assert out["resamples"] == 100 and out["unit"] == "entity" and out["entities"] == len(np.unique(ent))
    # each interval holds the full-sample value
    full = scoring_metrics(y, good, ent, day)
    for metric, (lo, hi) in out["ci95"]["good"].items():
        assert lo <= full[metric] <= hi, metric


def test_bootstrap_of_identical_scorers_has_zero_difference():
    rng, y, ent, day = _data(500, 2)
    s = rng.random(500) + y
    out = entity_bootstrap(y, {"a": s, "b": s.copy()}, ent, day, [("a", "b")], n=50, seed=0)
    assert all(v == [0.0, 0.0] for v in out["diff_ci95"]["a-b"].values())
    assert out == entity_bootstrap(y, {"a": s, "b": s.copy()}, ent, day, [("a", "b")], n=50, seed=0)  # seeded


def test_bootstrap_resamples_entities_not_rows():
    """Copying every row of an entity 5 times adds no information: with entity resampling the
    intervals are exactly those of the data with one row per entity (row resampling would narrow
    them by about sqrt(5))."""
    rng = np.random.default_rng(3)
    n = 300
    y = (rng.random(n) < 0.3).astype(int)
    s = y * 0.5 + rng.random(n)
    ent, day = np.arange(n), np.zeros(n, int)
    one = entity_bootstrap(y, {"m": s}, ent, day, [], n=60, seed=4, k=20)
    rep = entity_bootstrap(np.repeat(y, 5), {"m": np.repeat(s, 5)}, np.repeat(ent, 5), np.repeat(day, 5), [],
                           n=60, seed=4, k=20)
    for metric in ("auc_roc", "average_precision", "entity_precision@20"):
        assert rep["ci95"]["m"][metric] == pytest.approx(one["ci95"]["m"][metric], abs=1e-12), metric
    assert one["ci95"]["m"]["auc_roc"][1] - one["ci95"]["m"]["auc_roc"][0] > 0.05


def test_weighted_auc_ap_equal_scikit_learn():
    """The bootstrap's one-sort AUC / AP with resampling weights (zeros and ties included)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from offline.evaluate import _ranking, weighted_auc_ap

    rng = np.random.default_rng(5)
    for n, levels in ((50, 5), (2000, 40), (2000, 10**6)):
        y = (rng.random(n) < 0.2).astype(int)
        s = np.round(rng.random(n) + 0.3 * y, int(np.log10(levels)))  # ties when levels are few
        w = rng.poisson(1.0, n).astype(float)
        w[:3] = 0
        auc, ap = weighted_auc_ap(y, w, *_ranking(s))
        assert auc == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
        assert ap == pytest.approx(average_precision_score(y, s, sample_weight=w), abs=1e-12)
