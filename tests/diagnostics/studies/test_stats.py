"""The `stats` study: its estimators on data with a known answer, the join of saved runs and the
refusal of runs that do not match, and an end-to-end run over spectrum + displacement outputs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy.special import expit
from scipy.stats import norm

from diagnostics.config import DiagnoseConfig
from diagnostics.estimators.statistics import (auc, bhattacharyya_gaussian, cohens_d, cross_validated_probabilities, fit_logistic, histogram_overlap,
                                               proportion_with_ci, quantile_bins, stratified_auc, stratified_folds)
from diagnostics.registry import run_study
from diagnostics.studies.displacement import DisplacementStudyConfig
from diagnostics.studies.spectrum import SpectrumStudyConfig
from diagnostics.studies.stats import StatsStudyConfig, exponent_scores, run_stats, window_exponents
from runtime.errors import ConfigError, UserError
from tests.diagnostics.studies.test_displacement import BATCH, FIXTURE, N, SEGMENTS, SOLVED_ROWS, make_crafted_data

REPO = Path(__file__).resolve().parents[3]


# --- estimators with a known answer ----------------------------------------------------------------

def exact_moments(z: np.ndarray, mean: float, sd: float) -> np.ndarray:
    """z rescaled to have exactly this sample mean and unbiased SD."""
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def test_cohens_d_and_bhattacharyya_on_samples_with_exact_moments():
    """Test hypothesis: both are functions of the sample means and unbiased variances only, so
    samples rescaled to mean 0 / SD 1 and mean 2 / SD 2 give the closed forms to round-off:
    d = (0 - 2) / sqrt((1 + 4) / 2) for equal sizes; D_B = 4 / (4 * 5) + ln(5 / 4) / 2."""
    rng = np.random.default_rng(0)
    a, b = exact_moments(rng.normal(size=50), 0.0, 1.0), exact_moments(rng.normal(size=50), 2.0, 2.0)
    assert cohens_d(a, b) == pytest.approx(-2 / math.sqrt(2.5), rel=1e-12)
    assert cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(-3.0)
    assert bhattacharyya_gaussian(a, b) == pytest.approx(math.exp(-(0.2 + 0.5 * math.log(1.25))), rel=1e-12)
    assert bhattacharyya_gaussian(a, a) == pytest.approx(1.0)
    # equal variances: BC = exp(-d^2 / 8)
    c = exact_moments(rng.normal(size=50), 1.5, 1.0)
    assert bhattacharyya_gaussian(a, c) == pytest.approx(math.exp(-cohens_d(a, c) ** 2 / 8), rel=1e-12)
    assert math.isnan(cohens_d([1.0], [2.0, 3.0])) and math.isnan(bhattacharyya_gaussian([1.0, 1.0], [2.0, 3.0]))


def test_histogram_overlap_of_gaussians_and_limits():
    """Test hypothesis: for N(0,1) vs N(1,1) the overlapping coefficient is 2 Phi(-1/2) = 0.617.
    With 2e5 draws each and 50 bins of width ~0.2 the sampling error is ~3e-3 and the binning
    bias (upward) ~1e-3, so 0.01. Identical samples overlap 1, disjoint ones 0."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 200_000), rng.normal(1, 1, 200_000)
    assert histogram_overlap(a, b) == pytest.approx(2 * norm.cdf(-0.5), abs=0.01)
    assert histogram_overlap(a, a) == pytest.approx(1.0) and histogram_overlap(np.zeros(5), np.ones(5)) == 0.0


def test_quantile_bins_and_stratified_auc_on_constructed_strata():
    """Test hypothesis: deciles of 0..99 are i // 10; ties merge bins. Strata built with AUC 1
    (20 examples), AUC 1/2 (40, all scores tied) and one class only (5, left out) have the
    size-weighted mean (20 * 1 + 40 * 0.5) / 60 = 2/3."""
    np.testing.assert_array_equal(quantile_bins(np.arange(100.0), 10), np.arange(100) // 10)
    np.testing.assert_array_equal(quantile_bins(np.r_[np.ones(50), 2 * np.ones(50)], 10), np.r_[np.zeros(50), np.ones(50)])
    scores = np.r_[np.arange(20.0), np.zeros(40), np.zeros(5)]
    positive = np.r_[np.arange(20) >= 10, np.arange(40) < 20, np.ones(5, bool)]
    strata = np.r_[np.zeros(20), np.ones(40), 2 * np.ones(5)].astype(int)
    rows, mean = stratified_auc(scores, positive, strata)
    assert mean == pytest.approx(2 / 3)
    assert [(r["stratum"], r["n"], r["n_positive"], r["auc"]) for r in rows] == [(0, 20, 10, 1.0), (1, 40, 20, 0.5), (2, 5, 5, None)]


def test_stratified_folds_balance_classes_and_are_seeded():
    positive = np.arange(40) < 23
    folds = stratified_folds(positive, 5, seed=0)
    for f in range(5):
        assert (positive & (folds == f)).sum() in (4, 5) and (~positive & (folds == f)).sum() in (3, 4)
    assert np.array_equal(folds, stratified_folds(positive, 5, seed=0)) and not np.array_equal(folds, stratified_folds(positive, 5, seed=1))


def test_logistic_regression_recovers_known_coefficients():
    """Test hypothesis: maximum likelihood on 20000 draws of a known logistic model recovers
    (0.5, 1.5, -1.0); the asymptotic SE is ~0.02 per coefficient, so 0.1 is a 5-SE margin. At
    the returned weights the penalised gradient vanishes (Newton converged, 1e-10)."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20_000, 2))
    y = (rng.random(20_000) < expit(0.5 + X @ np.array([1.5, -1.0]))).astype(float)
    w = fit_logistic(X, y, l2=1e-8)
    np.testing.assert_allclose(w, [0.5, 1.5, -1.0], atol=0.1)
    w = fit_logistic(X, y, l2=1e-2)
    Xa = np.column_stack([np.ones(len(X)), X])
    grad = Xa.T @ (expit(Xa @ w) - y) / len(y) + 1e-2 * np.r_[0.0, w[1:]]
    assert np.abs(grad).max() < 1e-10


def test_cross_validated_auc_separating_and_uninformative_features():
    """Test hypothesis: a perfectly separating feature gives out-of-fold AUC 1 (the ridge keeps the
    weights finite); pure noise gives AUC 1/2 within 3 null SEs (sqrt(2001 / 12e6) = 0.013)."""
    rng = np.random.default_rng(3)
    y = np.arange(200) < 80
    x = np.where(y, 1 + rng.random(200), -1 - rng.random(200))
    p = cross_validated_probabilities(x[:, None], y, stratified_folds(y, 5, seed=0))
    assert auc(p, y) == 1.0 and np.isfinite(fit_logistic(x[:, None], y)).all()
    y = np.arange(2000) < 1000
    p = cross_validated_probabilities(rng.normal(size=(2000, 2)), y, stratified_folds(y, 5, seed=0))
    assert abs(auc(p, y) - 0.5) < 0.04


def test_window_exponents_and_spectrum_scores_by_hand():
    log_r = np.array([[[1.0, -2.0], [3.0, 0.0], [10.0, 10.0]], [[-2.0, 1.0], [0.0, 3.0], [0.0, 0.0]]])
    np.testing.assert_allclose(window_exponents(log_r, 2, 4), [[0.5, -0.25], [0.5, -0.25]])  # sums (4, -2) / 8, sorted
    scores = exponent_scores(np.array([[0.2, 0.05, -0.1]]))
    assert scores["lambda2"][0] == 0.05 and scores["spectral_mean"][0] == pytest.approx(0.05 / 1)
    assert scores["sum_positive"][0] == pytest.approx(0.25) and scores["n_positive"][0] == 2


# --- the join of saved runs -------------------------------------------------------------------------

def write_run(path: Path, summary: dict, arrays: dict[str, np.ndarray]) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    np.savez(path / "results.npz", **arrays)
    return path


def synthetic_runs(root: Path, n: int = 200, **spectrum_changes) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A spectrum and a displacement run dir of the same synthetic sample (S = 6, k = 3): failures
    have higher lambda_1 and d_late; some examples are solved from segment 2 on."""
    rng = np.random.default_rng(4)
    success = rng.random(n) < 0.5
    lam = np.sort(rng.normal(size=(n, 3)) * 0.1 + 0.1 * ~success[:, None], axis=1)[:, ::-1]
    log_r = rng.normal(size=(n, 6, 3))
    d_late = 10 ** np.where(success & (rng.random(n) < 0.6), rng.normal(-6, 0.3, n), rng.normal(0, 0.5, n) - 0.3 * success)
    drift = np.repeat(d_late[:, None], 6, 1) * rng.uniform(0.5, 1.5, (n, 6))
    by_segment = np.repeat(success[:, None], 6, 1) & (np.arange(6) >= rng.integers(0, 6, n)[:, None])
    by_segment[:, -1] = success
    common = {"index": np.arange(n) * 3, "exact": success, "exact_by_segment": by_segment, "q_halt": rng.normal(size=(n, 6)) + success[:, None],
              "givens": rng.integers(17, 30, n)}
    sample = {"checkpoint": "/x/run/step_7", "checkpoint_sha256": "ab" * 32, "split": "test", "seed": 0, "n": n, "segments": 6}
    spec = write_run(root / "spectrum", {**sample, "study": "spectrum", "k": 3, "sub_updates_per_segment": 4, "dtype": "float32", **spectrum_changes},
                     {**common, "lambda": lam, "log_r_segment": log_r})
    disp = write_run(root / "displacement", {**sample, "study": "displacement", "tau": 1e-3, "drift_floor": 1e-10, "late_window": 4,
                                             "success_rule": "exact", "dtype": "float32"},
                     {**common, "success": success, "success_by_segment": by_segment, "drift_zH": drift, "d_late": d_late})
    return spec, disp, {"success": success, "lambda": lam, "log_r": log_r, "d_late": d_late, "drift": drift, "by_segment": by_segment,
                        "q_halt": common["q_halt"][:, -1], "givens": common["givens"]}


def stats_config(*inputs: Path, **study) -> DiagnoseConfig:
    return DiagnoseConfig(study=StatsStudyConfig(inputs=[str(p) for p in inputs], **study))


def test_stats_on_synthetic_runs_match_direct_computations(tmp_path):
    """Every number of summary.json is the estimator applied to the right joined arrays, in the
    documented direction and subset (unsettled = d_late > tau; early = unsolved at w)."""
    spec, disp, a = synthetic_runs(tmp_path)
    assert run_stats(stats_config(spec, disp), tmp_path / "out") == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    ok, lam, d = a["success"], a["lambda"], a["d_late"]
    assert s["auc"]["lambda1"]["auc"] == pytest.approx(auc(-lam[:, 0], ok)) and s["auc"]["lambda1"]["direction"] == "-"
    assert s["auc"]["lambda3"]["auc"] == pytest.approx(auc(-lam[:, 2], ok))
    assert s["auc"]["spectral_mean"]["auc"] == pytest.approx(auc(-lam.mean(1), ok))
    assert s["auc"]["n_positive"]["auc"] == pytest.approx(auc(-(lam > 0).sum(1), ok))
    assert s["auc"]["d_late"]["auc"] == pytest.approx(auc(-d, ok)) and s["auc"]["q_halt"]["auc"] == pytest.approx(auc(a["q_halt"], ok))
    lo, hi = s["auc"]["lambda1"]["ci95"]
    assert lo < s["auc"]["lambda1"]["auc"] < hi
    unsettled = d > 1e-3
    _, decile = stratified_auc(-lam[unsettled, 0], ok[unsettled], quantile_bins(np.log10(d[unsettled]), 10))
    assert s["decile_matched"]["auc"] == pytest.approx(decile) and s["decile_matched"]["n_unsettled"] == unsettled.sum()
    _, givens = stratified_auc(-lam[:, 0], ok, quantile_bins(a["givens"], 10))
    assert s["givens_binned"]["auc"] == pytest.approx(givens)
    unsolved = ~a["by_segment"][:, 3]
    early = window_exponents(a["log_r"], 4, 4)[unsolved]
    assert s["early_window"]["n_unsolved"] == unsolved.sum()
    assert s["early_window"]["auc"]["lambda1"]["auc"] == pytest.approx(auc(-early[:, 0], ok[unsolved]))
    assert s["early_window"]["auc"]["drift"]["auc"] == pytest.approx(auc(-a["drift"][unsolved, :4].mean(1), ok[unsolved]))
    assert s["effect_sizes"]["lambda1"]["cohens_d"] == pytest.approx(cohens_d(lam[~ok, 0], lam[ok, 0]))
    base, full = s["logistic"]["auc_base"]["auc"], s["logistic"]["auc_full"]["auc"]
    assert base > 0.6 and s["logistic"]["delta_auc"] == pytest.approx(full - base)
    with np.load(tmp_path / "out" / "results.npz") as z:
        assert auc(z["p_full"], ok) == pytest.approx(s["logistic"]["auc_full"]["auc"]) and np.array_equal(z["index"], np.arange(200) * 3)
    assert s["n_exact_disagree"] == 0 and s["checkpoint_sha256"] == "ab" * 32
    assert "decile-matched" in (tmp_path / "out" / "report.md").read_text() and (tmp_path / "out" / "auc_forest.png").stat().st_size > 1000


def test_valid_path_outcome_comes_from_the_displacement_run(tmp_path):
    """With success=valid_path the outcome (final and per segment) is the displacement run's
    `success`, not the exact match: here every example with an even index counts as solved."""
    spec, disp, a = synthetic_runs(tmp_path, n=60)
    summary = json.loads((disp / "summary.json").read_text())
    (disp / "summary.json").write_text(json.dumps({**summary, "success_rule": "valid_path"}))
    with np.load(disp / "results.npz") as z:
        arrays = {k: z[k] for k in z.files}
    valid = np.arange(60) % 2 == 0
    np.savez(disp / "results.npz", **{**arrays, "success": valid, "success_by_segment": np.repeat(valid[:, None], 6, 1)})
    assert run_stats(stats_config(spec, disp, success="valid_path"), tmp_path / "out") == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["n_success"] == 30 and s["auc"]["lambda1"]["auc"] == pytest.approx(auc(-a["lambda"][:, 0], valid))
    assert s["early_window"]["n_unsolved"] == 30 and s["early_window"]["n_eventual_success"] == 0


def test_inputs_that_do_not_match_are_refused_in_one_line(tmp_path):
    spec, disp, _ = synthetic_runs(tmp_path / "a")
    other, _, _ = synthetic_runs(tmp_path / "b", checkpoint_sha256="cd" * 32)
    shifted, _, _ = synthetic_runs(tmp_path / "c", n=200)
    with np.load(shifted / "results.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(shifted / "results.npz", **{**arrays, "index": arrays["index"] + 1})
    cases = [
        (stats_config(other, disp), ConfigError, "differ in checkpoint_sha256"),
        (stats_config(shifted, disp), ConfigError, r"hold different examples \(index differs\)"),
        (stats_config(spec, other), ConfigError, "holds two spectrum runs"),
        (stats_config(spec), ConfigError, "missing: displacement"),
        (stats_config(spec, tmp_path / "nowhere"), UserError, "is not a finished spectrum or displacement run"),
        (stats_config(), ConfigError, r"needs study.inputs=\[SPECTRUM_DIR,DISPLACEMENT_DIR\]"),
        (stats_config(spec, disp, early_window=7), ConfigError, r"study.early_window=7 must be in \[1, 6\]"),
        (stats_config(spec, disp, success="valid_path"), ConfigError, "needs a displacement run made with study.success=valid_path"),
    ]
    for cfg, error, message in cases:
        with pytest.raises(error, match=message) as e:
            run_stats(cfg, tmp_path / "out")
        assert "\n" not in str(e.value)


def test_report_opens_with_the_verdict_including_an_extended_run(tmp_path):
    """An extended run of the same checkpoint (its own n) joins the verdict: its fates, with
    Wilson intervals, decide the answer; one with another dtype is refused."""
    spec, disp, a = synthetic_runs(tmp_path)
    n_fail = int((~a["success"]).sum())
    settled_wrong = int(((a["d_late"] <= 1e-3) & ~a["success"]).sum())
    summary = json.loads((disp / "summary.json").read_text())  # the displacement study's own counts
    (disp / "summary.json").write_text(json.dumps({**summary, "n_failure": n_fail, "cells": {"B": {"count": settled_wrong}}}))
    ext_summary = {"study": "extended", "checkpoint_sha256": "ab" * 32, "split": "test", "dtype": "float32", "segments": 6,
                   "survival_segments": [6, 32], "n_failure_at_budget": 50, "fate_counts": {"solved_later": 10, "settled_wrong": 2, "churning": 38}}
    ext = write_run(tmp_path / "extended", ext_summary, {"index": np.arange(60)})
    assert run_stats(stats_config(spec, disp, ext), tmp_path / "out") == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# Statistics of lambda, drift and halting confidence\n\n## Verdict\n\n**Failures are mostly trajectories that never settle")
    found = {f["key"]: f for f in s["verdict"]}
    assert (found["settled_wrong"]["count"], found["settled_wrong"]["n"]) == (2, 50)
    assert found["settled_wrong"]["ci95"] == pytest.approx(proportion_with_ci(2, 50)["ci95"])
    assert (found["settled_at_budget"]["count"], found["settled_at_budget"]["n"]) == (settled_wrong, n_fail) and found["auc_neg_lambda1"]["value"] == pytest.approx(auc(-a["lambda"][:, 0], a["success"]))
    write_run(tmp_path / "extended64", {**ext_summary, "dtype": "float64"}, {"index": np.arange(60)})
    with pytest.raises(ConfigError, match=r"differ in dtype \(float32 vs float64\): stats joins runs of the same checkpoint and dataset"):
        run_stats(stats_config(spec, disp, tmp_path / "extended64"), tmp_path / "out2")


def test_hrm_confidence_is_q_halt_minus_q_continue(tmp_path):
    """A displacement run of a model that halts on q_halt > q_continue (HRM): the confidence
    scored is the difference of the two logits at the last segment, and says so."""
    spec, disp, a = synthetic_runs(tmp_path)
    summary = json.loads((disp / "summary.json").read_text())
    (disp / "summary.json").write_text(json.dumps({**summary, "halting_rule": "q_halt > q_continue"}))
    with np.load(disp / "results.npz") as z:
        arrays = {k: z[k] for k in z.files}
    q_continue = np.random.default_rng(7).normal(size=arrays["q_halt"].shape)
    np.savez(disp / "results.npz", **arrays, q_continue=q_continue)
    assert run_stats(stats_config(spec, disp), tmp_path / "out") == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["confidence_score"] == "q_halt - q_continue"
    assert s["auc"]["q_halt"]["auc"] == pytest.approx(auc(a["q_halt"] - q_continue[:, -1], a["success"]))


def test_confidence_table_early_q_halt_and_strata_cis(tmp_path):
    """Confident = q_halt > 0 after the last segment: counts and Wilson CIs equal a direct count;
    the early-window q_halt AUC is over the unsolved at w; the decile-matched and givens-binned
    AUCs carry bootstrap CIs that bracket them; the logistic gain carries a paired CI."""
    spec, disp, a = synthetic_runs(tmp_path)
    assert run_stats(stats_config(spec, disp), tmp_path / "out") == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    ok, conf = a["success"], a["q_halt"]
    settled = a["d_late"] <= 1e-3
    table = s["confidence"]
    assert table["confident_failures"] == proportion_with_ci(int(((conf > 0) & ~ok).sum()), int((~ok).sum()))
    assert table["confident_settled_failures"]["count"] == int(((conf > 0) & ~ok & settled).sum())
    assert table["selective_accuracy"] == proportion_with_ci(int(((conf > 0) & ok).sum()), int((conf > 0).sum()))
    with np.load(disp / "results.npz") as z:
        q_w = z["q_halt"][:, 3]
    unsolved = ~a["by_segment"][:, 3]
    assert s["early_window"]["auc"]["q_halt"]["auc"] == pytest.approx(auc(q_w[unsolved], ok[unsolved]))
    for key in ("decile_matched", "givens_binned"):
        lo, hi = s[key]["ci95"]
        assert lo <= s[key]["auc"] <= hi
    lo, hi = s["logistic"]["delta_auc_ci95"]
    assert lo <= s["logistic"]["delta_auc"] <= hi
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Confident failures and the selection ceiling" in report and "paired stratified bootstrap 95% CI" in report


def test_config_composes_typed_and_rejects_mistyped_keys():
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("diagnose", overrides=["study=stats", "study.inputs=[a,b]"]))
        assert cfg.study == StatsStudyConfig(inputs=["a", "b"])
        with pytest.raises(ConfigCompositionException, match="study.cv_fold"):
            compose("diagnose", overrides=["study=stats", "study.cv_fold=3"])


# --- end to end on the fixture ------------------------------------------------------------------------

def test_stats_over_real_spectrum_and_displacement_runs(tmp_path):
    """spectrum + displacement on the fixture with a known success set, then stats: the join has
    n rows, the outcome is the crafted one and the d_late AUC is that of displacement's arrays."""
    data = make_crafted_data(tmp_path / "data")
    common = dict(checkpoint=str(FIXTURE / "run"), data_path=str(data), n=N, batch_size=BATCH)
    assert run_study(DiagnoseConfig(study=SpectrumStudyConfig(k=2, segments=SEGMENTS), **common), tmp_path / "spec") == 0
    assert run_study(DiagnoseConfig(study=DisplacementStudyConfig(segments=SEGMENTS), **common), tmp_path / "disp") == 0
    assert run_stats(stats_config(tmp_path / "spec", tmp_path / "disp"), tmp_path / "stats") == 0
    s = json.loads((tmp_path / "stats" / "summary.json").read_text())
    with np.load(tmp_path / "disp" / "results.npz") as z:
        d_late, success = z["d_late"], z["success"]
    assert s["n"] == N and s["n_success"] == len(SOLVED_ROWS) and np.flatnonzero(success).tolist() == SOLVED_ROWS
    assert s["auc"]["d_late"]["auc"] == pytest.approx(auc(-d_late, success))
    assert len(s["auc"]) == 2 + 3 + 2  # k exponents; mean, sum and count of positives; d_late; q_halt
    assert s["n_exact_disagree"] == 0 and s["logistic"]["auc_full"] is not None
