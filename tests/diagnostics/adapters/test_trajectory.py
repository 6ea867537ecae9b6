"""record_rollout visits the same states as adapters.rollout and its drift is the segment step norm."""
import numpy as np
import pytest
import torch

from diagnostics.adapters.step_map import SubUpdateMap, rollout
from diagnostics.adapters.trajectory import record_rollout, success_by_segment
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
