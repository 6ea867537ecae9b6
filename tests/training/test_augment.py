"""Trajectory augmentation: which rows get noise, how much, and that `none` changes nothing."""
from __future__ import annotations

import math

import pytest
import torch

from model_core.core import LatentCarry
from model_core.registry import build_model
from runtime.errors import ConfigError
from training.augment import AugmentConfig, TrajectoryAugmenter
from trm.config import TRMConfig

B, S, D = 4, 6, 512  # per-rank batch, latent length, width


def _augmenter(step: int = 1, **kw) -> TrajectoryAugmenter:
    aug = TrajectoryAugmenter(AugmentConfig(**kw), per_rank_batch=B, device=torch.device("cpu"), seed=0)
    aug.step = step
    return aug


def _carry(n: int) -> LatentCarry:
    return LatentCarry(torch.ones(n, S, D), -torch.ones(n, S, D))


def test_copies_per_mode():
    assert AugmentConfig().copies == 1
    assert AugmentConfig(mode="single_perturbed_ce", n_perturbed=1).copies == 1
    assert AugmentConfig(mode="multi_perturbed_ce", n_perturbed=3).copies == 4
    assert AugmentConfig(mode="multi_perturbed_ce").clean_copies == 1
    assert AugmentConfig(mode="single_perturbed_ce").clean_copies == 0


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"mode": "multi"}, "augment.mode='multi' is not one of none, single_perturbed_ce, multi_perturbed_ce"),
        ({"where": "z"}, "augment.where='z' is not one of z_H, z_L, both"),
        ({"mode": "multi_perturbed_ce", "n_perturbed": 0}, "augment.n_perturbed=0 must be >= 1"),
        ({"p_clean": 1.5}, r"augment.p_clean=1.5 must be in \[0, 1\]"),
        ({"sigma_min": 1e-2, "sigma_max": 1e-3}, "0 < sigma_min <= sigma_max"),
    ],
)
def test_invalid_settings_name_the_key(kw, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**kw).validate()


def test_replicate_is_copy_major():
    aug = _augmenter(mode="multi_perturbed_ce", n_perturbed=2)
    batch = {"inputs": torch.arange(B).view(B, 1), "puzzle_identifiers": torch.arange(B)}
    out = aug.replicate(batch)
    assert out["inputs"].shape == (3 * B, 1)
    assert out["puzzle_identifiers"].tolist() == list(range(B)) * 3
    assert _augmenter().replicate(batch) is batch  # mode none: untouched object


def test_noise_only_on_reset_rows_of_perturbed_copies():
    """multi (clean + 2): copy 0 and rows that did not reset keep their exact values."""
    aug = _augmenter(mode="multi_perturbed_ce", n_perturbed=2, sigma=0.1)
    n = 3 * B
    reset = torch.tensor([True, False, True, True] * 3)
    before = _carry(n)
    after = aug(before, reset)
    changed = (after.z_H != before.z_H).flatten(1).any(1) & (after.z_L != before.z_L).flatten(1).any(1)
    expected = reset & (torch.arange(n) >= B)
    assert changed.tolist() == expected.tolist()


def test_noise_std_matches_sigma():
    """eps = sigma * N(0, I): the sample std over 2 x 6 x 512 x 4 values is sigma within 3%
    (the relative standard error of a std estimate from n = 24576 values is ~1/sqrt(2n) = 0.45%)."""
    aug = _augmenter(mode="single_perturbed_ce", n_perturbed=1, sigma=1e-2)
    before = _carry(B)
    after = aug(before, torch.ones(B, dtype=torch.bool))
    noise = torch.cat([(after.z_H - before.z_H).flatten(), (after.z_L - before.z_L).flatten()])
    assert abs(noise.mean().item()) < 1e-3 * 1e-2 * 10
    assert noise.std().item() == pytest.approx(1e-2, rel=0.03)


@pytest.mark.parametrize("where, h, l", [("z_H", True, False), ("z_L", False, True), ("both", True, True)])
def test_where_selects_the_state(where, h, l):
    aug = _augmenter(mode="single_perturbed_ce", n_perturbed=1, sigma=0.1, where=where)
    before = _carry(B)
    after = aug(before, torch.ones(B, dtype=torch.bool))
    assert (not torch.equal(after.z_H, before.z_H)) == h
    assert (not torch.equal(after.z_L, before.z_L)) == l


def test_curriculum_clean_warmup_then_linear_ramp():
    aug = _augmenter(mode="single_perturbed_ce", clean_warmup_steps=10, ramp_steps=20)
    assert [aug.sigma_scale(s) for s in (1, 10, 11, 20, 30, 31, 1000)] == [0.0, 0.0, 0.05, 0.5, 1.0, 1.0, 1.0]
    aug.step = 5
    before = _carry(B)
    assert aug(before, torch.ones(B, dtype=torch.bool)) is before  # clean warm-up: no noise drawn


def test_log_uniform_sigmas_cover_the_range():
    """log sigma ~ U[log 1e-5, log 1e-2]: every draw in range, mean of log10 at -3.5 +- 0.1
    (std of log10 sigma is 3/sqrt(12) = 0.87; standard error with 4096 rows 0.014)."""
    aug = TrajectoryAugmenter(AugmentConfig(mode="single_perturbed_ce", distribution="log_uniform"), 4096, torch.device("cpu"), seed=0)
    aug.step = 1
    sigma = aug.row_sigmas(torch.ones(4096, dtype=torch.bool))
    assert sigma.min() >= 1e-5 and sigma.max() <= 1e-2
    assert torch.log10(sigma).mean().item() == pytest.approx(-3.5, abs=0.1)


def test_mixture_keeps_p_clean_of_trajectories_clean():
    """Fraction of zero-sigma rows = p_clean = 0.25 within 0.03 (binomial s.e. with 4096 rows: 0.007)."""
    aug = TrajectoryAugmenter(AugmentConfig(mode="single_perturbed_ce", distribution="mixture", p_clean=0.25, sigma=1e-3), 4096, torch.device("cpu"), seed=0)
    aug.step = 1
    sigma = aug.row_sigmas(torch.ones(4096, dtype=torch.bool))
    assert torch.all((sigma == 0) | (sigma == torch.tensor(1e-3)))
    assert (sigma == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)


def test_state_dict_round_trip_reproduces_the_noise():
    aug = _augmenter(mode="single_perturbed_ce", sigma=0.1)
    state = aug.state_dict()
    first = aug(_carry(B), torch.ones(B, dtype=torch.bool))
    again = _augmenter(mode="single_perturbed_ce", sigma=0.1)
    again.load_state_dict(state)
    second = again(_carry(B), torch.ones(B, dtype=torch.bool))
    assert torch.equal(first.z_H, second.z_H) and torch.equal(first.z_L, second.z_L)


def _micro_model(batch: int):
    cfg = TRMConfig(hidden_size=16, num_heads=2, expansion=2, H_cycles=1, L_cycles=1, L_layers=1, halt_max_steps=2, puzzle_emb_ndim=16, puzzle_emb_len=1, forward_dtype="float32")
    cfg.derive_from_data(vocab_size=5, seq_len=4, num_puzzle_identifiers=1, batch_size=batch)
    torch.manual_seed(0)
    return build_model(cfg)


def _batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "inputs": torch.randint(0, 5, (n, 4), generator=g, dtype=torch.int32),
        "labels": torch.randint(1, 5, (n, 4), generator=g).to(torch.int32),
        "puzzle_identifiers": torch.zeros(n, dtype=torch.int32),
    }


def test_mode_none_installs_nothing_and_perturb_is_train_only():
    model = _micro_model(B)
    _augmenter(mode="none").install(model.model)
    assert model.model.perturb is None
    aug = _augmenter(mode="single_perturbed_ce", sigma=1.0)
    aug.install(model.model)
    assert model.model.perturb is aug
    model.eval()
    batch = _batch(B)
    with torch.no_grad():
        _, noisy_out = model.model(model.initial_carry(batch), batch)
        model.model.perturb = None
        _, clean_out = model.model(model.initial_carry(batch), batch)
    assert torch.equal(noisy_out["logits"], clean_out["logits"])  # eval mode: never perturbed


def test_multi_with_zero_sigma_averages_identical_trajectories():
    """With sigma 0 and no exploration the (1 + n) copies are the same trajectory, so the loss
    normalised by the replicated batch equals the plain loss (float64 sums; tolerance 1e-12)."""
    plain = _micro_model(B)
    multi = _micro_model(3 * B)
    for m in (plain, multi):
        m.model.config.halt_exploration_prob = 0.0
    aug = _augmenter(mode="multi_perturbed_ce", n_perturbed=2, sigma=0.0)
    aug.install(multi.model)
    batch = _batch(B)
    _, loss_plain, *_ = plain(plain.initial_carry(batch), batch)
    rep = aug.replicate(batch)
    _, loss_multi, *_ = multi(multi.initial_carry(rep), rep)
    assert loss_multi.item() / (3 * B) == pytest.approx(loss_plain.item() / B, abs=1e-12)
    assert math.isfinite(loss_plain.item())
