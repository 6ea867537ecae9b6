"""Known-answer tests of diagnostics.estimators.statistics (hand-counted AUCs, separable mixtures, 3/n)."""
import math

import numpy as np
import pytest

from diagnostics.estimators.statistics import auc, auc_with_ci, bootstrap_ci, otsu_threshold, percentile_sweep, rule_of_three


def test_auc_matches_pairwise_count_with_ties():
    """Mann-Whitney AUC = mean over (positive, negative) pairs of [s+ > s-] + 0.5 [s+ == s-]."""
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in scores[positive] for b in scores[~positive]]
    assert auc(scores, positive) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert auc(np.array([3.0, 2.0, 1.0]), np.array([True, True, False])) == 1.0
    assert auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert math.isnan(auc(np.array([1.0, 2.0]), np.array([True, True])))


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    positive = rng.random(1000) < 0.5
    scores = rng.normal(size=1000) + positive  # AUC of N(1,1) vs N(0,1) = Phi(1/sqrt 2) = 0.760
    lo, hi = bootstrap_ci(auc, scores, positive, seed=0)
    assert lo < auc(scores, positive) < hi and (lo, hi) == bootstrap_ci(auc, scores, positive, seed=0)
    assert lo < 0.760 < hi and hi - lo < 0.1
    out = auc_with_ci(scores, positive, seed=0)
    assert out["auc"] == auc(scores, positive) and out["ci95"] == [lo, hi]
    assert auc_with_ci(scores, np.ones(1000, bool), seed=0) == {"auc": None, "ci95": None}


def test_otsu_splits_two_separated_modes_between_them():
    """Test hypothesis: for two well separated clusters, every threshold in the gap has the same
    (maximal) between-class variance, and Otsu returns a bin edge inside the gap."""
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(-6, 0.3, 400), rng.normal(-1, 0.3, 100)])
    t = otsu_threshold(x)
    assert x[x < -3.5].max() < t < x[x > -3.5].min()
    assert math.isnan(otsu_threshold(np.ones(10))) and math.isnan(otsu_threshold(np.array([1.0])))


def test_otsu_matches_brute_force_between_class_variance():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, 300), rng.normal(3, 0.5, 200)])
    counts, edges = np.histogram(x, bins=256)
    centers = (edges[:-1] + edges[1:]) / 2
    between = {}
    for i in range(1, 256):
        c0, c1 = counts[:i], counts[i:]
        w0, w1 = c0.sum(), c1.sum()
        if w0 and w1:
            between[edges[i]] = w0 * w1 * ((c0 * centers[:i]).sum() / w0 - (c1 * centers[i:]).sum() / w1) ** 2
    # empty bins make several edges tie for the maximum; any of them is Otsu's threshold
    assert between[otsu_threshold(x)] == pytest.approx(max(between.values()), rel=1e-12)


def test_rule_of_three_and_percentiles():
    assert rule_of_three(300) == pytest.approx(0.01) and rule_of_three(2) == 1.0 and rule_of_three(0) == 1.0
    np.testing.assert_allclose(percentile_sweep(np.arange(101.0), [5, 50, 95]), [5.0, 50.0, 95.0])
