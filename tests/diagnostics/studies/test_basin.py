"""The `basin` study: per-row noise independent of batching, the perturbation mask, control choice,
hard-core accounting on constructed arrays, user errors, and an end-to-end run on the HRM fixture
with planted labels (known successes, a failure solved later, one solved before the budget only),
checking sigma = 0 reproduces the unperturbed trajectory, the summary against results.npz,
batch-size independence and resume."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnostics.adapters.trajectory import first_solved_after
from diagnostics.config import DiagnoseConfig
from diagnostics.registry import run_study
from diagnostics.studies.basin import BasinStudyConfig, hard_core, perturb, restart_noise, select_controls
from runtime.errors import ConfigError
from tests.diagnostics.studies.test_extended import FIXTURES, assert_resumes, load_npz, plant_labels, typed_config


def test_noise_is_per_example_sigma_and_restart():
    """Row (i, r) depends only on (seed, example index, sigma, r): the same in any grouping,
    different for another sigma, restart or seed."""
    shape = (2, 3, 4)
    both = restart_noise(np.array([7, 9]), 0.1, 3, shape, 0, torch.float64)
    alone = restart_noise(np.array([9]), 0.1, 3, shape, 0, torch.float64)
    assert both.shape == (6, 2, 3, 4) and torch.equal(both[3:], alone)
    assert not torch.equal(both[3], both[4])  # restarts differ
    assert not torch.equal(restart_noise(np.array([9]), 0.3, 3, shape, 0, torch.float64), alone)
    assert not torch.equal(restart_noise(np.array([9]), 0.1, 3, shape, 1, torch.float64), alone)
    assert abs(float(restart_noise(np.arange(50), 1.0, 4, shape, 0, torch.float64).std()) - 1) < 0.05  # N(0, 1): 4800 draws


@pytest.mark.parametrize("where, changed", [("z_H", (True, False)), ("z_L", (False, True)), ("both", (True, True))])
def test_perturb_touches_only_the_chosen_part(where, changed):
    """z0 + sigma * scale * eps on the chosen channel of the (B, 2, S, D) state, exactly; sigma 0
    returns z0 itself (no arithmetic, so the unperturbed trajectory is reproduced bit for bit)."""
    z0 = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    noise = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    out = perturb(z0, noise, 0.1, 2.0, where)
    for channel, expect in enumerate(changed):
        expected = z0[:, channel] + 0.2 * noise[:, channel] if expect else z0[:, channel]
        torch.testing.assert_close(out[:, channel], expected, rtol=0, atol=1e-15)
    assert perturb(z0, noise, 0.0, 2.0, where) is z0


def test_control_choice():
    """As many controls as failures, capped at the successes; `requested` overrides; seeded."""
    successes = np.array([1, 4, 6, 8, 9])
    assert len(select_controls(successes, 3, None, 0)) == 3 and len(select_controls(successes, 9, None, 0)) == 5
    assert len(select_controls(successes, 3, 1, 0)) == 1 and len(select_controls(successes, 3, 0, 0)) == 0
    picked = select_controls(successes, 3, None, 0)
    assert np.all(np.diff(picked) > 0) and set(picked) <= set(successes) and np.array_equal(picked, select_controls(successes, 3, None, 0))


def test_hard_core_on_constructed_restarts():
    """Three failures and one control, sigmas listed unsorted (0.1, 0, 1): failure 0 is freed at
    sigma 0 (restart 1, at S), failure 1 only at sigma 1 and only late (first_solved 9 > S), failure
    2 never. Cumulative over increasing sigma, "at S": 2/3 at 0 and 0.1, 2/3 at 1; "ever": 2/3,
    2/3, 1/3. The control (solved everywhere) does not count."""
    solved = np.zeros((4, 3, 2), bool)
    first = np.full((4, 3, 2), -1)
    solved[0, 1, 1], first[0, 1, 1] = True, 4
    first[1, 2, 0] = 9
    solved[3], first[3] = True, 4
    results = {"sigmas": np.array([0.1, 0.0, 1.0]), "tested_failure": np.array([True, True, True, False]), "solved_at_budget": solved,
               "first_solved": first}
    np.testing.assert_allclose(hard_core(results, "at_budget"), [2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(hard_core(results, "ever"), [2 / 3, 2 / 3, 1 / 3])


def test_config_composes_to_the_schema_defaults():
    assert typed_config("basin").study == BasinStudyConfig()
    assert typed_config("basin", "study.sigmas=[0,0.5]", "study.where=z_L").study.sigmas == [0.0, 0.5]


def fixture_config(data_path: Path | str | None = None, batch_size: int = 4, **study) -> DiagnoseConfig:
    settings = {"segments_basin": 8, "restarts": 2, "sigmas": [0.0, 0.1, 1.0], **study}
    return DiagnoseConfig(study=BasinStudyConfig(**settings), checkpoint=str(FIXTURES / "hrm" / "run"), data_path=str(data_path or FIXTURES / "hrm" / "data"),
                          n=8, batch_size=batch_size)


@pytest.mark.parametrize("study, message", [
    ({"sigmas": []}, r"study.sigmas is empty"),
    ({"sigmas": [0.0, -0.1]}, r"study.sigmas=\[0.0, -0.1\] must be finite and >= 0"),
    ({"sigmas": [0.1, 0.1]}, r"lists a sigma twice"),
    ({"where": "z"}, r"study.where='z' is not one of \['z_H', 'z_L', 'both'\]"),
    ({"segments_basin": 3}, r"study.segments_basin=3 must be at least the budget study.segments=4"),
    ({"restarts": 0}, r"study.restarts=0 must be >= 1"),
    ({"control_successes": -1}, r"study.control_successes=-1 must be >= 0"),
    ({"success": "valid_path"}, r"success rule 'valid_path' does not apply to sudoku data \(study.success\); sudoku rules: exact$"),
])
def test_user_errors(tmp_path, study, message):
    with pytest.raises(ConfigError, match=message):
        run_study(fixture_config(**study), tmp_path)


def test_planted_restarts_summary_batching_and_resume(tmp_path):
    """Test hypothesis: on the HRM fixture, labels planted from the unperturbed prediction at
    segment 4 = S (rows 0 and 5: successes, both taken as controls since 6 failures > 2), 7 (row 1)
    and 2 (row 4: right before the budget only, which is not "ever solved") make sigma = 0 give
    exactly: controls solved at S (break rate 0), no failure solved at S, first_solved 7 for row 1
    and -1 for the others, i.e. single and best-of-K "ever" rates 1/6. Every summary number equals a recomputation from results.npz. A
    run with another batch size (chunks of 8 instead of 2 examples) gives identical arrays, and
    a run resumed after losing a base shard and a restart shard reproduces every array."""
    data = plant_labels(tmp_path, "hrm", {0: 4, 5: 4, 1: 7, 4: 2}, n=8, segments=8)
    out = tmp_path / "out"
    cfg = fixture_config(data)
    assert run_study(cfg, out) == 0
    res = load_npz(out / "results.npz")
    tested = np.searchsorted(res["index"], res["tested_index"])
    assert tested.tolist() == list(range(8)) and res["tested_failure"].tolist() == [False, True, True, True, True, False, True, True]
    assert res["solved_at_budget"].shape == res["first_solved"].shape == (8, 3, 2)
    zero = res["solved_at_budget"][:, 0], res["first_solved"][:, 0]
    assert zero[0].tolist() == [[True, True]] + [[False, False]] * 4 + [[True, True]] + [[False, False]] * 2
    assert zero[1][[1, 2, 3, 4, 6, 7]].tolist() == [[7, 7], [-1, -1], [-1, -1], [-1, -1], [-1, -1], [-1, -1]]
    np.testing.assert_array_equal(zero[1][:, 0], first_solved_after(res["success_by_segment"], 3))  # = the base trajectory, from S = 4 on

    summary = json.loads((out / "summary.json").read_text())
    assert summary["sigma0_reproduces"] is True and (summary["n_failures"], summary["n_controls"], summary["accuracy"]) == (6, 2, 0.25)
    row0 = summary["per_sigma"][0]
    assert (row0["single_at_budget"], row0["best_of_k_at_budget"], row0["break_rate"]) == (0.0, 0.0, 0.0)
    assert row0["single_ever"] == row0["best_of_k_ever"] == pytest.approx(1 / 6)
    fail, ctrl = res["tested_failure"], ~res["tested_failure"]
    for j, row in enumerate(summary["per_sigma"]):
        assert row["sigma"] == res["sigmas"][j]
        solved, ever = res["solved_at_budget"][fail, j], res["first_solved"][fail, j] >= 0
        assert row["single_at_budget"] == pytest.approx(solved.mean()) and row["best_of_k_at_budget"] == pytest.approx(solved.any(1).mean())
        assert row["single_ever"] == pytest.approx(ever.mean()) and row["best_of_k_ever"] == pytest.approx(ever.any(1).mean())
        assert row["break_rate"] == pytest.approx((~res["solved_at_budget"][ctrl, j]).mean())
        lo, hi = row["single_ever_ci95"]
        assert lo <= row["single_ever"] <= hi
    never = ~(res["first_solved"][fail] >= 0).any((1, 2))
    assert summary["hard_core_ever"] == pytest.approx(never.mean()) and summary["hard_core_ever_count"] == int(never.sum()) <= 5
    assert summary["hard_core_at_budget"] == pytest.approx((~res["solved_at_budget"][fail].any((1, 2))).mean())
    assert summary["unperturbed_ever_solved_fraction"] == pytest.approx(1 / 6)
    assert summary["h_init_std"] == pytest.approx(1.195249, abs=1e-6)
    report = (out / "report.md").read_text()
    assert "| sigma | single_at_budget |" in report and "hard core of HRM" in report
    assert all((out / f).stat().st_size > 1000 for f in ("solve_rate.png", "hard_core.png"))

    wide = tmp_path / "wide"
    assert run_study(fixture_config(data, batch_size=16), wide) == 0
    again = load_npz(wide / "results.npz")
    assert all(np.array_equal(again[key], res[key]) for key in res)

    assert_resumes(run_study, cfg, out, deleted=["shards/batch_000001.npz", "restarts/shards/batch_000004.npz"], kept="restarts/shards/batch_000001.npz")


def test_no_sigma_zero_and_no_controls(tmp_path):
    """Without sigma 0 the reproduction check is absent (null); control_successes = 0 restarts no
    success, leaving the break rate undefined (null) rather than 0."""
    run_study(fixture_config(sigmas=[0.05], control_successes=0, segments_basin=5), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sigma0_reproduces"] is None and summary["n_controls"] == 0 and summary["per_sigma"][0]["break_rate"] is None
    assert summary["n_failures"] == 8 and not math.isnan(summary["hard_core_ever"])
