"""record_rollout visits the same states as adapters.rollout and its drift is the segment step norm."""
import numpy as np
import pytest
import torch

from diagnostics.adapters.step_map import SubUpdateMap, rollout
from diagnostics.adapters.trajectory import classify_recurrence, record_rollout, recurrence_distances, success_by_segment
from diagnostics.inputs import load_study_inputs
from puzzles.kinds import KINDS
from runtime.errors import ConfigError


@pytest.fixture(scope="module")
def trm_inputs():
    from tests.conftest import OFFICIAL_FIXTURES

    root = OFFICIAL_FIXTURES / "trm_mlp"
    return load_study_inputs(str(root / "run" / "step_100"), str(root / "data"), n=4, seed=0)


def test_record_rollout_equals_rollout_and_drift_is_the_step_norm(trm_inputs):
    _, _, batch = next(trm_inputs.batches(4))
    smap = SubUpdateMap(trm_inputs.core, batch)
    final, readouts = rollout(smap, 3)
    traj = record_rollout(smap, 3)
    assert torch.equal(traj.state, final) and torch.equal(traj.readouts.preds, readouts.preds)
    # drift of segment 1 = distance from the reset carry to the state after one segment
    one, _ = rollout(smap, 1)
    z0 = smap.initial_state()
    expected = (one - z0).double().flatten(2).norm(dim=-1)
    torch.testing.assert_close(traj.drift[:, 0], expected, rtol=0, atol=0)
    assert traj.drift.shape == (4, 3, 2) and (traj.drift_zH == traj.drift[..., 0]).all()


def test_success_rules():
    labels = np.array([[2, 3, -100]])
    preds = np.array([[[2, 3, 9], [2, 4, 9]]])
    sudoku, maze = KINDS["sudoku"], KINDS["maze"]
    np.testing.assert_array_equal(success_by_segment(preds, labels, labels, "exact", sudoku), [[True, False]])
    with pytest.raises(ConfigError, match="does not apply to sudoku data"):
        success_by_segment(preds, labels, labels, "valid_path", sudoku)
    with pytest.raises(ConfigError, match="not one of"):
        success_by_segment(preds, labels, labels, "close", maze)


def test_valid_path_by_segment_accepts_another_shortest_path():
    # 3x3 open maze, S top-left, G bottom-right: the labelled path goes right then down; the
    # prediction after segment 2 goes down then right (also shortest), after segment 1 it is broken
    space, start, goal, path = 2, 3, 4, 5  # tokens of ' ', 'S', 'G', 'o' (puzzles.maze.CHARSET position + 1)
    inputs = np.array([[start, space, space, space, space, space, space, space, goal]])
    labels = np.array([[start, path, path, space, space, path, space, space, goal]])
    other = np.array([start, space, space, path, space, space, path, path, goal])
    broken = np.array([start, path, space, space, space, space, space, space, goal])
    preds = np.stack([broken, other, labels[0]])[None]
    np.testing.assert_array_equal(success_by_segment(preds, labels, inputs, "valid_path", KINDS["maze"]), [[False, True, True]])
    np.testing.assert_array_equal(success_by_segment(preds, labels, inputs, "exact", KINDS["maze"]), [[False, False, True]])


def test_recurrence_tells_fixed_points_periodic_traps_and_aperiodic_orbits():
    """Three late trajectories with known answers: a fixed point with float32-size jitter, a
    period-3 cycle among three states, and a chaotic logistic-map coordinate (aperiodic)."""
    rng = np.random.default_rng(0)
    k, dim = 12, 50
    fixed = np.repeat(rng.normal(size=(1, dim)), k, 0) * (1 + 1e-7 * rng.normal(size=(k, dim)))
    cycle = rng.normal(size=(3, dim))[np.arange(k) % 3]
    x = np.empty(k + 100)
    x[0] = 0.3
    for t in range(1, len(x)):
        x[t] = 3.9 * x[t - 1] * (1 - x[t - 1])
    chaotic = x[-k:, None] * rng.normal(size=(1, dim)) + rng.normal(size=(1, dim))
    r = recurrence_distances(np.stack([fixed, cycle, chaotic]), max_period=8, window=4)
    assert r.shape == (3, 8) and r[0].max() < 1e-6 and r[1, 2] == 0.0 and r[1, 5] == 0.0 and r[1, [0, 1, 3]].min() > 0.1
    assert r[2].min() > 1e-3
    np.testing.assert_array_equal(classify_recurrence(r, 1e-3), [1, 3, 0])
    with pytest.raises(ValueError, match="need 12 late states"):
        recurrence_distances(np.stack([fixed[:11]]), max_period=8, window=4)


def test_resolution_floor_keeps_round_off_and_exact_zeros_in_one_settled_cluster():
    """Three clusters of late drift in float32 with ||z_H|| = 80: exact zeros (150 examples),
    round-off (~1e-5, i.e. ~1 ulp of ||z_H||, 60 examples) and moving trajectories (~1, 100
    examples). A fixed 1e-10 floor makes three modes of log10 d_late and Otsu splits between the
    zeros and the round-off, calling 60 settled trajectories unsettled; the resolution floor
    (4 ulps of ||z_H|| = 3.8e-5) merges the first two and tau falls between settled and moving."""
    from diagnostics.adapters.trajectory import floored_log_drift, resolution_floor, settling_threshold

    rng = np.random.default_rng(3)
    d_late = np.r_[np.zeros(150), 10 ** rng.normal(-5, 0.1, 60), 10 ** rng.normal(0, 0.3, 100)]
    settled_truth = np.r_[np.ones(210, bool), np.zeros(100, bool)]
    norm = np.full(310, 80.0)
    floor = resolution_floor(norm, "float32", 1e-10)
    assert floor == pytest.approx(4 * np.finfo(np.float32).eps * 80)
    new = floored_log_drift(d_late, floor)
    tau_new, _ = settling_threshold(new, threshold=None, drift_floor=1e-10, otsu_bins=256)
    np.testing.assert_array_equal(new <= tau_new, settled_truth)
    old = floored_log_drift(d_late, 1e-10)
    tau_old, _ = settling_threshold(old, threshold=None, drift_floor=1e-10, otsu_bins=256)
    assert (old <= tau_old).sum() == 150  # the fixed floor's failure this guards against
    assert resolution_floor(None, "float32", 1e-10) == 1e-10
    assert resolution_floor(norm, "float64", 1e-10)[0] == pytest.approx(max(4 * np.finfo(np.float64).eps * 80, 1e-10))
