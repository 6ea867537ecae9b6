"""The `extended` study: escape-rate fit on survival curves with a known rate, fates on constructed
arrays, config and user errors, and an end-to-end run on the HRM fixture whose labels are planted
from the model's own predictions, so each example's first solving segment is known."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from diagnostics.adapters.step_map import SubUpdateMap
from diagnostics.adapters.trajectory import classify_recurrence, first_solved_after, record_rollout, recurrence_distances
from diagnostics.config import DiagnoseConfig
from diagnostics.estimators.statistics import escape_rate_fit, survival_curve
from diagnostics.inputs import load_study_inputs
from diagnostics.registry import run_study
from diagnostics.studies.extended import CHURNING, FATES, SETTLED_WRONG, SOLVED_AT_BUDGET, SOLVED_LATER, ExtendedStudyConfig, classify_fates
from runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "official"


# --- escape rate -------------------------------------------------------------------------------------

def geometric_first_events(counts: list[int], start: int) -> np.ndarray:
    """First-event times whose survivor counts at t = start, start+1, ... are exactly `counts`
    (the last count never has an event: -1)."""
    events = [np.full(a - b, start + i + 1) for i, (a, b) in enumerate(zip(counts[:-1], counts[1:]))]
    return np.concatenate([*events, np.full(counts[-1], -1)]).astype(np.int64)


def test_escape_rate_of_exact_geometric_survival_is_log_two():
    """Test hypothesis: survivors halving every segment from 1024 (s(t) = 2^-(t-16), exactly
    representable) lie on a line of slope -log 2 in log s, so the least-squares kappa is log 2
    to round-off (1e-12) whatever the time offset; the fitted line passes through s(16) = 1."""
    first = geometric_first_events([1024 >> i for i in range(11)], start=16)
    times = np.arange(16, 27)
    np.testing.assert_allclose(survival_curve(first, times), 2.0 ** -np.arange(11), rtol=0, atol=0)
    fit = escape_rate_fit(first, times, min_remaining=1)
    assert abs(fit.kappa - math.log(2)) < 1e-12 and abs(fit.intercept - 16 * math.log(2)) < 1e-10
    assert fit.times_used.tolist() == list(range(16, 27))


def test_min_remaining_drops_the_trapped_tail():
    """Test hypothesis: 1024 halving down to 16, then 8 survivors that never escape. With
    min_remaining = 10 only the geometric part (counts >= 16) is fitted: kappa = log 2 exactly;
    with min_remaining = 1 the flat tail of 8 enters and pulls kappa below log 2."""
    first = geometric_first_events([1024 >> i for i in range(7)] + [8] * 6, start=0)
    times = np.arange(0, 13)
    trimmed = escape_rate_fit(first, times, min_remaining=10)
    assert trimmed.times_used.tolist() == list(range(7)) and abs(trimmed.kappa - math.log(2)) < 1e-12
    assert escape_rate_fit(first, times, min_remaining=1).kappa < 0.7 * math.log(2)


def test_escape_rate_of_sampled_geometric_survival():
    """Test hypothesis: 4000 failures escaping independently with probability p = 0.1 per
    segment have s(t) = 0.9^t in expectation, kappa = -log 0.9 = 0.10536. Fitted where at least
    100 remain (t <= ~35), the estimate's sampling sd is ~0.003 (observed error 0.0009 for seed 0),
    so 0.01 is > 3 sd; the seeded bootstrap 95% CI (200 resamples) contains the true rate."""
    from diagnostics.estimators.statistics import bootstrap_ci

    rng = np.random.default_rng(0)
    first = rng.geometric(0.1, size=4000).astype(np.int64)  # first segment solved, 1-based
    times = np.arange(0, 80)
    kappa = -math.log(0.9)
    assert abs(escape_rate_fit(first, times, 100).kappa - kappa) < 0.01
    lo, hi = bootstrap_ci(lambda f, _: escape_rate_fit(f, times, 100).kappa, first, np.ones(len(first), bool), seed=0, n_boot=200)
    assert lo < kappa < hi and hi - lo < 0.03


def test_escape_rate_edge_cases():
    """Nothing escapes: kappa = 0 (not -0); fewer than two fitted times or no entries: NaN."""
    assert escape_rate_fit(np.full(20, -1), np.arange(5), 10).kappa == 0.0
    assert str(escape_rate_fit(np.full(20, -1), np.arange(5), 10).kappa) == "0.0"
    assert math.isnan(escape_rate_fit(np.array([1, 1, 1]), np.arange(5), 1).kappa)  # only t = 0 has survivors
    assert math.isnan(escape_rate_fit(np.zeros(0, np.int64), np.arange(5), 1).kappa)
    np.testing.assert_array_equal(survival_curve(np.array([-1, 2, 3, 3]), np.array([1, 2, 3])), [1.0, 0.75, 0.25])


# --- fates ---------------------------------------------------------------------------------------------

def test_first_solved_and_fates_on_constructed_arrays():
    """Hand-made success (5, 6) with budget S = 2 and drift with tau = 1 (log10 tau = 0), last 3
    segments: row 0 solved at S; row 1 solved at 2 then at 5 -> solved at S; row 2 solved at 1
    only (before S) with drift 0.5 late -> settled wrong; row 3 first solved at 4 -> solved
    later; row 4 never, drift 2 -> churning; row 5 never, late drift mean (0.5, 0.5, 2.0) = 1.0
    -> at tau, settled (<=)."""
    success = np.zeros((6, 6), bool)
    success[0, 1] = success[1, [1, 4]] = success[2, 0] = success[3, [3, 5]] = True
    drift = np.ones((6, 6))
    drift[2, 3:] = 0.5
    drift[4, 3:] = 2.0
    drift[5, 3:] = [0.5, 0.5, 2.0]
    np.testing.assert_array_equal(first_solved_after(success, 2), [-1, 5, -1, 4, -1, -1])
    np.testing.assert_array_equal(first_solved_after(success, 0), [2, 2, 1, 4, -1, -1])
    fates = classify_fates(success, drift, segments=2, log_tau=0.0, settle_window=3, drift_floor=1e-10)
    assert fates.tolist() == [SOLVED_AT_BUDGET, SOLVED_AT_BUDGET, SETTLED_WRONG, SOLVED_LATER, CHURNING, SETTLED_WRONG]
    assert classify_fates(success, drift, 2, math.nan, 3, 1e-10).tolist() == [0, 0, CHURNING, SOLVED_LATER, CHURNING, CHURNING]
    assert FATES[SETTLED_WRONG] == "settled_wrong"


# --- config and user errors ---------------------------------------------------------------------------------

def typed_config(study: str, *overrides: str) -> DiagnoseConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("diagnose", overrides=[f"study={study}", *overrides]))


def test_config_composes_to_the_schema_defaults_and_rejects_mistyped_keys():
    cfg = typed_config("extended")
    assert cfg.study == ExtendedStudyConfig()  # the YAML restates the schema, nothing more
    assert typed_config("extended", "study.segments_ext=64", "study.threshold=0.5").study.threshold == 0.5
    with pytest.raises(ConfigCompositionException, match="study.segment_ext"):
        typed_config("extended", "study.segment_ext=64")


def fixture_config(data_path: Path | str | None = None, name: str = "hrm", n: int = 8, batch_size: int = 4, **study) -> DiagnoseConfig:
    return DiagnoseConfig(study=ExtendedStudyConfig(**{"segments_ext": 12, "min_remaining": 2, **study}), checkpoint=str(FIXTURES / name / "run"),
                          data_path=str(data_path or FIXTURES / name / "data"), n=n, batch_size=batch_size)


@pytest.mark.parametrize("study, message", [
    ({"segments_ext": 3}, r"study.segments_ext=3 must exceed the budget study.segments=4"),
    ({"segments_ext": 4}, r"study.segments_ext=4 must exceed"),
    ({"segments": 0}, r"study.segments=0 must be >= 1"),
    ({"late_window": 5}, r"study.late_window=5 must be in \[1, 4\]"),
    ({"settle_window": 0}, r"study.settle_window=0 must be in \[1, 12\]"),
    ({"min_remaining": 0}, r"study.min_remaining=0 must be >= 1"),
    ({"threshold": -1.0}, r"study.threshold=-1.0 must be a positive drift"),
    ({"max_period": 10}, r"study.max_period=10 and study.recurrence_window=4 must be >= 1 and fit in study.segments_ext=12 together"),
    ({"recurrence_tol": 0.0}, r"study.recurrence_tol=0.0 must be > 0"),
    ({"success": "valid_path"}, r"success rule 'valid_path' does not apply to sudoku data \(study.success\); sudoku rules: exact$"),
    ({"success": "close"}, r"study.success='close' is not one of"),
])
def test_user_errors(tmp_path, study, message):
    with pytest.raises(ConfigError, match=message):
        run_study(fixture_config(**study), tmp_path)


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="study=extended needs checkpoint=PATH and data_path=DIR"):
        run_study(DiagnoseConfig(study=ExtendedStudyConfig()), tmp_path)


# --- end to end --------------------------------------------------------------------------------------------

def plant_labels(tmp_path: Path, name: str, plant: dict[int, int], n: int, segments: int) -> Path:
    """A copy of fixture `name`'s data whose sampled rows `plant` keys (n examples, seed 0) get as
    labels the model's own prediction after segment plant[row] (1-based) of the unperturbed
    rollout: that example is then solved at that segment (and at any other whose prediction is
    the same on the non-pad cells; pad 0 is the ignored label)."""
    root = FIXTURES / name
    inputs = load_study_inputs(str(root / "run"), str(root / "data"), n=n, seed=0)
    _, _, batch = next(inputs.batches(n))
    preds = record_rollout(SubUpdateMap(inputs.core, batch), segments).readouts.preds.numpy()
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    labels_file = data / "test" / "all__labels.npy"
    labels = np.load(labels_file)
    for row, segment in plant.items():
        labels[inputs.index[row]] = preds[row, segment - 1]
    np.save(labels_file, labels)
    return data


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {key: z[key] for key in z.files}


def test_planted_fates_summary_recomputation_and_resume(tmp_path):
    """Test hypothesis: on the HRM fixture (nothing solved; every segment's prediction differs
    from the others', checked for these rows) labels planted from segment 4 = S (row 0), 7
    (row 1), 11 (row 2) and 2 (row 4, solved before the budget only) give exactly: success at S
    for row 0; first_solved 7 and 11, fate solved_later, for rows 1 and 2; first_solved -1 for
    the other failures; accuracy 1/8 after segments 2, 4, 7 and 11 and 0 elsewhere. The summary
    equals a recomputation from results.npz; deleting a shard and re-running recomputes only that
    batch and reproduces every array."""
    data = plant_labels(tmp_path, "hrm", {0: 4, 1: 7, 2: 11, 4: 2}, n=8, segments=12)
    out = tmp_path / "out"
    cfg = fixture_config(data)
    assert run_study(cfg, out) == 0
    res = load_npz(out / "results.npz")
    n, s_ext = 8, 12
    shapes = {"index": (n,), "success_by_segment": (n, s_ext), "exact_by_segment": (n, s_ext), "drift_zH": (n, s_ext), "drift_zL": (n, s_ext),
              "q_halt": (n, s_ext), "q_continue": (n, s_ext), "givens": (n,), "d_late": (n,), "first_solved": (n,), "fate": (n,),
              "recurrence": (n, 8), "period": (n,)}
    assert {key: res[key].shape for key in shapes} == shapes
    expected_accuracy = np.zeros(s_ext)
    expected_accuracy[[1, 3, 6, 10]] = 1 / 8
    np.testing.assert_array_equal(res["success_by_segment"].mean(0), expected_accuracy)
    assert res["first_solved"][1:].tolist() == [7, 11, -1, -1, -1, -1, -1]
    assert res["fate"][0] == SOLVED_AT_BUDGET and res["fate"][1] == res["fate"][2] == SOLVED_LATER
    assert set(res["fate"][3:].tolist()) <= {SETTLED_WRONG, CHURNING}
    # recurrence: r_p from the z_H states of independent rollouts of 1..12 segments, one batch of 8
    inputs = load_study_inputs(str(FIXTURES / "hrm" / "run"), str(data), n=n, seed=0)
    (_, _, batch), = inputs.batches(n)
    late = np.stack([record_rollout(SubUpdateMap(inputs.core, batch), t).state[:, 0].double().numpy() for t in range(1, s_ext + 1)], 1)
    np.testing.assert_allclose(res["recurrence"], recurrence_distances(late, 8, 4), rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(res["period"], classify_recurrence(res["recurrence"], 1e-3))

    summary = json.loads((out / "summary.json").read_text())
    failure = ~res["success_by_segment"][:, 3]
    times = np.arange(4, 13)
    fit = escape_rate_fit(res["first_solved"][failure], times, 2)
    d_late = res["drift_zH"][:, :4].mean(1)
    settled = res["drift_zH"][:, -8:].mean(1) <= summary["tau"]
    assert summary["accuracy_by_segment"] == expected_accuracy.tolist()
    assert (summary["accuracy_at_budget"], summary["accuracy_final"], summary["n_failure_at_budget"]) == (1 / 8, 0.0, 7)
    np.testing.assert_allclose(res["d_late"], d_late, rtol=1e-15)
    assert summary["fate_counts"] == {"solved_later": 2, "settled_wrong": int(settled[3:].sum()), "churning": int((~settled[3:]).sum())}
    assert summary["fraction_solved_later"] == 2 / 7
    never = res["period"][3:]
    assert summary["attractor_counts"] == {"fixed_point": int((never == 1).sum()), "periodic": int((never >= 2).sum()), "aperiodic": int((never == 0).sum())}
    assert summary["n_never_solved"] == 5 and summary["fraction_wrong_attractor"] == ((never >= 1).sum()) / 7
    np.testing.assert_allclose(summary["survival"], [1, 1, 1, 6 / 7, 6 / 7, 6 / 7, 6 / 7, 5 / 7, 5 / 7], rtol=1e-15)
    assert summary["kappa_per_segment"] == pytest.approx(fit.kappa, rel=1e-12) and fit.kappa > 0
    assert summary["kappa_per_module_evaluation"] == pytest.approx(fit.kappa / 8, rel=1e-12)
    lo, hi = summary["kappa_per_segment_ci95"]
    assert lo <= fit.kappa <= hi and summary["kappa_fit_segments"] == [4, 12]
    assert summary["median_segments_to_solve"] == 5.0  # (7 - 4, 11 - 4)
    report = (out / "report.md").read_text()
    assert "| kappa_per_segment |" in report and "TRM failures mostly escape" in report
    assert all((out / f).stat().st_size > 1000 for f in ("survival.png", "accuracy.png", "fates.png"))

    assert_resumes(run_study, cfg, out, deleted=["shards/batch_000001.npz"], kept="shards/batch_000000.npz")


def assert_resumes(run, cfg: DiagnoseConfig, out: Path, deleted: list[str], kept: str) -> None:
    """Delete the shards `deleted` and results.npz of a finished run in `out`, run again: the
    shard `kept` is not rewritten, and results.npz and summary.json come out identical."""
    before, summary = load_npz(out / "results.npz"), (out / "summary.json").read_text()
    mtime = (out / kept).stat().st_mtime_ns
    for name in [*deleted, "results.npz"]:
        (out / name).unlink()
    assert run(cfg, out) == 0
    assert (out / kept).stat().st_mtime_ns == mtime
    after = load_npz(out / "results.npz")
    assert after.keys() == before.keys() and all(np.array_equal(after[key], before[key]) for key in before)
    assert (out / "summary.json").read_text() == summary


def test_fixed_threshold_decides_settling(tmp_path):
    """Test hypothesis: with tau fixed above every drift all never-solved failures settle; with
    tau below every drift none does (the fixture's drift is between 1e-3 and 1e3)."""
    high = tmp_path / "high"
    run_study(fixture_config(threshold=1e6, segments_ext=6, settle_window=2, max_period=2, recurrence_window=2), high)
    res = load_npz(high / "results.npz")
    assert (res["fate"] == SETTLED_WRONG).all() and json.loads((high / "summary.json").read_text())["tau_source"] == "fixed"
    low = tmp_path / "low"
    run_study(fixture_config(threshold=1e-6, segments_ext=6, settle_window=2, max_period=2, recurrence_window=2), low)
    assert (load_npz(low / "results.npz")["fate"] == CHURNING).all()
