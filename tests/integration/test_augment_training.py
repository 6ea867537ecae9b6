"""Trajectory augmentation inside real training runs (analysis.md section 8), TRM and HRM.

Test hypothesis: `augment=none` leaves training exactly as it is without any augmenter; the
perturbed modes add sigma * N(0, I) only to the freshly reset rows of the perturbed copies, only
to the configured state (z_H, z_L or both), with the curriculum and sigma distributions of the
config. A spy on `TrajectoryAugmenter.__call__` records every perturbation the model applies.
With the micro arches (halt_max_steps 4, q_halt still below 0) every slot halts after 4 segments,
so all rows restart at steps 1, 5, 9 and 13.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tests.integration.helpers import assert_same, load, tiny_overrides, train, train_records, training_state
from training import loop as training
from training.augment import TrajectoryAugmenter

B = 32  # per-rank loader batch of the tiny runs


@dataclass
class Call:
    step: int
    reset: torch.Tensor  # (N,) bool
    before: tuple[torch.Tensor, torch.Tensor]  # z_H, z_L (N, S, D)
    after: tuple[torch.Tensor, torch.Tensor]


@pytest.fixture
def spy(monkeypatch) -> list[Call]:
    calls: list[Call] = []
    original = TrajectoryAugmenter.__call__

    def recording(self, carry, reset):
        out = original(self, carry, reset)
        calls.append(Call(self.step, reset.clone(), (carry.z_H.clone(), carry.z_L.clone()), (out.z_H.clone(), out.z_L.clone())))
        return out

    monkeypatch.setattr(TrajectoryAugmenter, "__call__", recording)
    return calls


def _noise(call: Call) -> tuple[torch.Tensor, torch.Tensor]:
    return call.after[0] - call.before[0], call.after[1] - call.before[1]


class NoAugmenter:
    """Stands in for TrajectoryAugmenter as if the module did not exist: touches nothing."""

    enabled = False

    def __init__(self, *args, **kwargs):
        self.step = 0

    def install(self, act_model) -> None:
        pass

    def replicate(self, batch):
        return batch


def test_none_is_bit_identical_to_training_without_the_augmenter(sudoku4, tmp_path, monkeypatch):
    with_none = tmp_path / "none"
    train(tiny_overrides(sudoku4, with_none, "max_steps=12", "augment=none"))
    monkeypatch.setattr(training, "TrajectoryAugmenter", NoAugmenter)
    without = tmp_path / "without"
    train(tiny_overrides(sudoku4, without, "max_steps=12"))
    assert_same(training_state(load(with_none / "checkpoints" / "last.pt")), training_state(load(without / "checkpoints" / "last.pt")))
    assert train_records(with_none) == train_records(without)


def test_zero_sigma_is_bit_identical_to_none(sudoku4, tmp_path, spy):
    """single_perturbed_ce with sigma 0 runs the whole noise path (its own generator, so the
    exploration draws are untouched) and adds exact zeros: the same run as augment=none."""
    none, zero = tmp_path / "none", tmp_path / "zero"
    train(tiny_overrides(sudoku4, none, "max_steps=12"))
    train(tiny_overrides(sudoku4, zero, "max_steps=12", "augment=single_perturbed_ce", "augment.n_perturbed=1", "augment.sigma=0"))
    assert [c.step for c in spy][:2] == [1, 2]  # the noise path really ran
    a, b = training_state(load(none / "checkpoints" / "last.pt")), training_state(load(zero / "checkpoints" / "last.pt"))
    b.pop("augment")
    a.pop("augment")
    assert_same(a, b)
    assert train_records(none) == train_records(zero)


@pytest.mark.parametrize(
    "arch, mode, where",
    [
        ("trm_debug", "single_perturbed_ce", "z_H"),
        ("trm_debug", "single_perturbed_ce", "z_L"),
        ("trm_debug", "multi_perturbed_ce", "both"),
        ("hrm_debug", "single_perturbed_ce", "both"),
        ("hrm_debug", "multi_perturbed_ce", "z_L"),
    ],
)
def test_noise_lands_only_where_configured(arch, mode, where, sudoku4, tmp_path, spy):
    """multi = clean + 3 copies (4B rows, copy 0 never perturbed); single = 1 perturbed copy.
    Changed rows are exactly the reset rows of perturbed copies, in the configured state only,
    and the added noise has std sigma = 0.05 (within 5%: ~10^4-10^5 values per event)."""
    sigma = 0.05
    run_dir = tmp_path / "run"
    train(tiny_overrides(sudoku4, run_dir, f"arch={arch}", "max_steps=5", f"augment={mode}", f"augment.where={where}", f"augment.sigma={sigma}"))
    copies, clean = (4, 1) if mode == "multi_perturbed_ce" else (1, 0)
    config = load(run_dir / "checkpoints" / "last.pt")["config"]
    assert config["arch"]["batch_size"] == copies * B  # the model (and its sparse table) is built for every trajectory
    assert [c.step for c in spy] == [1, 2, 3, 4, 5]
    targets = {"z_H": (True, False), "z_L": (False, True), "both": (True, True)}[where]
    for call in spy:
        assert call.reset.shape == (copies * B,)
        expected_rows = call.reset & (torch.arange(copies * B) >= clean * B)
        for noise, targeted in zip(_noise(call), targets):
            changed = noise.flatten(1).ne(0).any(1)
            assert changed.tolist() == (expected_rows if targeted else torch.zeros_like(expected_rows)).tolist(), call.step
            if targeted and expected_rows.any():
                assert noise[expected_rows].std().item() == pytest.approx(sigma, rel=0.05)
    assert [c.step for c in spy if c.reset.all()] == [1, 5]


def test_curriculum_keeps_clean_then_ramps_sigma(sudoku4, tmp_path, spy):
    """clean_warmup_steps=4, ramp_steps=8: rows restarting at steps 1, 5, 9, 13 get sigma times
    0, 1/8, 5/8 and 1 (within 5%)."""
    sigma = 0.1
    train(tiny_overrides(sudoku4, tmp_path / "run", "max_steps=13", "augment=single_perturbed_ce", f"augment.sigma={sigma}",
                         "augment.clean_warmup_steps=4", "augment.ramp_steps=8"))
    measured = {}
    for call in spy:
        noise = torch.cat([n[call.reset].flatten() for n in _noise(call)]) if call.reset.any() else None
        if call.step <= 4:
            assert all(torch.equal(a, b) for a, b in zip(call.before, call.after))
        elif noise is not None:
            measured[call.step] = noise.std().item() / sigma
    assert sorted(measured) == [5, 9, 13]
    assert measured == pytest.approx({5: 1 / 8, 9: 5 / 8, 13: 1.0}, rel=0.05)


@pytest.mark.parametrize("distribution", ["log_uniform", "mixture"])
def test_sigma_distributions_per_trajectory(distribution, sudoku4, tmp_path, spy):
    """log_uniform: each restarted row's noise std lies in [sigma_min, sigma_max] = [1e-3, 1e-1]
    and the rows differ; mixture (p_clean 0.5, sigma 0.05): rows are either untouched or at sigma.
    Per-row stds come from 2 x 17 x 16 = 544 values (relative standard error ~3%, bounds +-15%)."""
    train(tiny_overrides(sudoku4, tmp_path / "run", "max_steps=1", "augment=single_perturbed_ce", f"augment.distribution={distribution}",
                         "augment.sigma=0.05", "augment.sigma_min=1e-3", "augment.sigma_max=1e-1", "augment.p_clean=0.5"))
    (call,) = spy
    assert call.reset.all()
    z_H, z_L = _noise(call)
    row_std = torch.cat([z_H.flatten(1), z_L.flatten(1)], 1).std(1)
    if distribution == "log_uniform":
        assert row_std.min() >= 1e-3 * 0.85 and row_std.max() <= 1e-1 * 1.15
        assert row_std.max() / row_std.min() > 5
    else:
        clean = row_std == 0
        assert 0 < clean.sum() < B
        assert row_std[~clean].tolist() == pytest.approx([0.05] * int((~clean).sum()), rel=0.15)
