"""record_rollout visits the same states as adapters.rollout and its drift is the segment step norm."""
import numpy as np
import pytest
import torch

from diagnostics.adapters import SubUpdateMap, rollout
from diagnostics.inputs import load_study_inputs
from diagnostics.trajectory import record_rollout, success_by_segment
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
    np.testing.assert_array_equal(success_by_segment(preds, labels, labels, "exact", 11), [[True, False]])
    with pytest.raises(ConfigError, match="applies to Maze"):
        success_by_segment(preds, labels, labels, "valid_path", 11)
    with pytest.raises(ConfigError, match="not one of"):
        success_by_segment(preds, labels, labels, "close", 11)
