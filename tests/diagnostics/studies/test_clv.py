"""The `clv` study: known-answer CLV angles through the model adapter, agreement with the generic
estimator path and with the spectrum study's exponents, statistics, config and outputs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diagnostics.adapters.step_map import SubUpdateMap, segment_ftle
from diagnostics.config import DiagnoseConfig
from diagnostics.estimators.clv import clv_along_orbit, line_angle
from diagnostics.inputs import load_study_inputs
from diagnostics.registry import run_study
from diagnostics.studies import clv
from diagnostics.studies.clv import ClvStudyConfig, example_draws, segment_angles
from diagnostics.studies.spectrum import example_frames
from model_core.layers import math_sdpa
from runtime.errors import ConfigError
from tests.conftest import OFFICIAL_FIXTURES
from tests.diagnostics.studies.test_spectrum import linear_model

REPO = Path(__file__).resolve().parents[3]
TRM = OFFICIAL_FIXTURES / "trm_mlp"
F64 = torch.float64


def segment_jacobian_eigenvectors(smap: SubUpdateMap) -> tuple[torch.Tensor, torch.Tensor]:
    """|eigenvalues| (16,) descending and unit eigenvectors (16, 16) as columns of the one-segment
    Jacobian M of `linear_model`'s map (affine sub-updates, so M is constant), by jacfwd."""
    z = smap.initial_state()  # (2, 2, S, D); examples do not mix, take example 0's block

    def segment(state: torch.Tensor) -> torch.Tensor:
        for kind in smap.schedule:
            state = smap.apply(kind, state)
        return state

    m = torch.func.jacfwd(segment)(z).reshape(2, 16, 2, 16)[0, :, 0]
    values, vectors = torch.linalg.eig(m)
    assert values.imag.abs().max() < 1e-12  # distinct real eigenvalues: CLVs are unique
    order = values.abs().argsort(descending=True)
    vectors = vectors.real[:, order]
    return values.abs()[order], vectors / vectors.norm(dim=0)


@pytest.mark.parametrize("jvp_impl", ["manual", "func"])
def test_linear_model_angles_are_those_between_segment_jacobian_eigenvectors(jvp_impl):
    """Test hypothesis: on a TRM whose block is linear (test_spectrum.linear_model) the segment map
    is affine with a constant Jacobian M, so at segment ends the CLVs are M's eigenvectors ordered
    by |eigenvalue| (all real and distinct here), and angle(CLV 1, CLV 6) is the angle between
    eigenvectors 1 and 6; `lambda` is log|eig| / 6 per sub-update. Reference: jacfwd of one
    segment and torch.linalg.eig. Convergence: the largest ratio of adjacent |eigenvalues| among
    the first 7 is 0.45, and 0.45^30 ~ 4e-11 after 30 warm-up and 30 backward segments; tolerance
    1e-6 degrees (observed ~3e-9) and 1e-9 on lambda."""
    smap, exact, _ = linear_model()
    mags, vectors = segment_jacobian_eigenvectors(smap)
    angles, lam = segment_angles(smap, segments=32, k=6, warmup_segments=30, backward_segments=30, jvp_impl=jvp_impl,
                                 generator=torch.Generator().manual_seed(1))
    expected = float(line_angle(vectors[:, 0], vectors[:, 5]))
    assert angles.shape == (2, 3)  # points at the ends of segments 30, 31, 32
    assert (angles - expected).abs().max() < 1e-6
    assert np.abs(lam.numpy() - exact[:6]).max() < 1e-9
    assert np.allclose(np.log(mags[:6].numpy()) / 6, exact[:6], atol=1e-10)  # jacfwd + eig vs the hand-built M


def test_summary_statistics_on_known_groups():
    """Test hypothesis: with success angles 40..60 and failure angles 1..10 (disjoint), the AUC of
    angle_min for success is 1 with a degenerate CI [1, 1]; the medians are the sample medians and
    their bootstrap CIs contain them; an empty outcome gives None; the convergence e-folds are gap
    x sub-updates of each window. Reference: hand arithmetic."""
    success = np.arange(10) < 6
    angle_min = np.concatenate([np.linspace(40, 60, 6), np.linspace(1, 10, 4)])
    lam = np.tile(np.array([0.3, 0.1, -0.2]), (10, 1))  # smallest adjacent gap 0.2
    results = {"exact": success, "angle_min": angle_min, "angle_median": angle_min + 5, "lambda": lam}
    meta = {"sub_updates_per_segment": 8, "warmup_segments": 2, "backward_segments": 3}
    summary = clv.summarise(results, meta, seed=0)
    assert (summary["n_success"], summary["n_failure"], summary["accuracy"]) == (6, 4, 0.6)
    assert summary["auc_angle_min"] == 1.0 and summary["auc_angle_min_ci95"] == [1.0, 1.0]
    assert summary["median_angle_min_success"] == pytest.approx(np.median(angle_min[success]))
    assert summary["median_angle_median_failure"] == pytest.approx(np.median(angle_min[~success]) + 5)
    lo, hi = summary["median_angle_min_failure_ci95"]
    assert lo <= summary["median_angle_min_failure"] <= hi
    assert summary["min_angle_overall"] == 1.0
    assert summary["median_min_gap"] == pytest.approx(0.2)
    assert (summary["efolds_forward"], summary["efolds_backward"]) == (pytest.approx(3.2), pytest.approx(4.8))
    none = clv.summarise({**results, "exact": np.zeros(10, dtype=bool)}, meta, seed=0)
    assert none["median_angle_min_success"] is None and none["auc_angle_min"] is None and none["auc_angle_min_ci95"] is None
    assert "| auc_angle_min | 1.000000 |" in clv.format_report({**summary, "k": 3, "points": 2, **{key: 0 for key in (
        "checkpoint", "checkpoint_sha256", "n", "segments", "sub_update_convention", "estimator", "jvp_impl", "dtype")}})


def typed_config(*overrides: str) -> DiagnoseConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("diagnose", overrides=["study=clv", *overrides]))


def fixture_config(**study) -> DiagnoseConfig:
    return DiagnoseConfig(study=ClvStudyConfig(**{"k": 2, "segments": 3, "warmup_segments": 1, "backward_segments": 1, **study}),
                          checkpoint=str(TRM / "run"), data_path=str(TRM / "data"), n=6, batch_size=3, dtype="float64")


def test_config_composes_typed_and_user_errors(tmp_path):
    cfg = typed_config("study.k=3")
    assert isinstance(cfg.study, ClvStudyConfig)
    assert (cfg.study.k, cfg.study.segments, cfg.study.warmup_segments, cfg.study.backward_segments, cfg.study.jvp_impl) == (3, None, 4, 4, "manual")
    with pytest.raises(ConfigError, match=r"study.k=1 must be in \[2, "):
        run_study(fixture_config(k=1), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"study.warmup_segments=0 must be in \[1, 3\]"):
        run_study(fixture_config(warmup_segments=0), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"study.backward_segments=0 must be >= 1"):
        run_study(fixture_config(backward_segments=0), tmp_path / "c")


def test_study_on_the_fixture_end_to_end(tmp_path):
    """Test hypothesis: the study's angles (manual JVPs, angles from the coefficients C) are those
    between the CLV vectors Q C computed by the generic path (torch.func.jvp of the step map,
    vectors kept) from the same per-example draws; its lambda equals the spectrum study's
    segment_ftle exponents over [warmup_segments, S) from the same frame. float64 on the official
    TRM-MLP fixture, 3 segments + 1 backward; tolerance 1e-6 degrees and 1e-10 (round-off of two
    JVP implementations and two summation orders)."""
    cfg = fixture_config()
    assert run_study(cfg, tmp_path) == 0
    with np.load(tmp_path / "results.npz") as z:
        res = {key: z[key] for key in z.files}
    N, S, P, k = 6, 3, 3, 2
    shapes = {"index": (N,), "exact": (N,), "exact_by_segment": (N, S), "angles": (N, P), "angle_min": (N,), "angle_median": (N,), "lambda": (N, k)}
    assert {key: res[key].shape for key in shapes} == shapes
    assert ((res["angles"] >= 0) & (res["angles"] <= 90)).all()
    np.testing.assert_array_equal(res["angle_min"], res["angles"].min(1))
    np.testing.assert_array_equal(res["exact"], res["exact_by_segment"][:, -1])

    inputs = load_study_inputs(cfg.checkpoint, cfg.data_path, n=N, seed=0, dtype="float64")
    _, rows, batch = next(inputs.batches(3))
    smap = SubUpdateMap(inputs.core, batch)
    z0 = smap.initial_state()
    frames, coefficients = example_draws(inputs.index[rows], k, tuple(z0.shape[1:]), 0, z0.dtype, z0.device)
    with math_sdpa():
        generic = clv_along_orbit(smap.step, z0, k=k, times=(8, 16, 24), n_backward=8, tangents=frames, coefficients=coefficients, keep_frames=True)
    v = generic.vectors()  # (3, P, k, 2, S, D)
    np.testing.assert_allclose(res["angles"][:3], line_angle(v[:, :, 0].flatten(2), v[:, :, 1].flatten(2)).numpy(), atol=1e-6)
    assert torch.equal(frames, example_frames(inputs.index[rows], k, tuple(z0.shape[1:]), 0, z0.dtype, z0.device))
    ftle = segment_ftle(smap, segments=S, k=k, tangents=frames)
    np.testing.assert_allclose(res["lambda"][:3], ftle.exponents(start=1).numpy(), atol=1e-10)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["study"], summary["estimator"], summary["k"], summary["points"], summary["n"]) == ("clv", "ginelli_clv_qr_jvp", 2, 3, 6)
    assert summary["n_success"] + summary["n_failure"] == N and summary["min_angle_overall"] == pytest.approx(res["angle_min"].min())
    failures = res["angle_min"][~res["exact"].astype(bool)]
    assert summary["median_angle_min_failure"] == (pytest.approx(float(np.median(failures))) if len(failures) else None)
    report = (tmp_path / "report.md").read_text()
    assert "| median_angle_min_failure |" in report and "| efolds_backward |" in report
    assert (tmp_path / "clv_angle_hist.png").stat().st_size > 1000
