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
    out = auc_with_ci(scores, positive, seed=0)  # stratified: close to the pooled resampling's CI, not equal
    assert out["auc"] == auc(scores, positive) and out["ci95"] == pytest.approx([lo, hi], abs=0.01)
    assert out == auc_with_ci(scores, positive, seed=0)
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


def test_auc_ci_is_stratified_and_covers_the_true_auc():
    """Scores N(0,1) for negatives and N(d,1) for positives have AUC = Phi(d / sqrt 2) = 0.76 for
    d = 1. Over 100 seeded samples (60 positives, 140 negatives) the stratified bootstrap 95% CI
    holds it about 95 times (binomial sd ~2.2); each CI comes from resamples with 60 and 140."""
    from scipy.stats import norm

    from diagnostics.estimators.statistics import auc_two_sample

    truth = norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(11)
    covered = 0
    for seed in range(100):
        positive = np.r_[np.ones(60, bool), np.zeros(140, bool)]
        scores = rng.normal(size=200) + positive
        ci = auc_with_ci(scores, positive, seed=seed, n_boot=400)["ci95"]
        covered += ci[0] <= truth <= ci[1]
    assert 88 <= covered <= 100
    pos, neg = rng.normal(size=(3, 7)), rng.normal(size=(3, 9))  # vectorised over resamples as scipy calls it
    assert np.allclose(auc_two_sample(pos, neg), [auc(np.r_[p, n], np.r_[np.ones(7, bool), np.zeros(9, bool)]) for p, n in zip(pos, neg)])


def test_paired_auc_difference_covers_a_known_difference():
    """Two correlated scores (rho = 0.5) with positives shifted by 1.2 and 0.6: the true AUC
    difference is Phi(1.2 / sqrt 2) - Phi(0.6 / sqrt 2) = 0.1378; over 100 seeded samples the
    paired stratified bootstrap CI holds it about 95 times, and it is narrower than the two
    unpaired CIs would suggest (the shared component cancels)."""
    from scipy.stats import norm

    from diagnostics.estimators.statistics import paired_auc_difference

    truth = norm.cdf(1.2 / np.sqrt(2)) - norm.cdf(0.6 / np.sqrt(2))
    rng = np.random.default_rng(5)
    covered, widths = 0, []
    for seed in range(100):
        positive = np.r_[np.ones(80, bool), np.zeros(120, bool)]
        shared, own_a, own_b = rng.normal(size=(3, 200))
        a = (shared + own_a) / np.sqrt(2) + 1.2 * positive
        b = (shared + own_b) / np.sqrt(2) + 0.6 * positive
        out = paired_auc_difference(a, b, positive, seed=seed, n_boot=400)
        assert out["delta"] == pytest.approx(auc(a, positive) - auc(b, positive))
        covered += out["ci95"][0] <= truth <= out["ci95"][1]
        widths.append(out["ci95"][1] - out["ci95"][0])
    assert 88 <= covered <= 100
    single = auc_with_ci(a, positive, seed=0, n_boot=400)["ci95"]
    assert np.median(widths) < (single[1] - single[0]) * np.sqrt(2)
