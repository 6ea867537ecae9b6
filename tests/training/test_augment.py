"""Trajectory augmentation: which rows get noise, how much, and that `none` changes nothing."""
from __future__ import annotations

import math

import pytest
import torch

from model_core.core import LatentCarry
from model_core.registry import build_model
from runtime.errors import ConfigError
from training.augment import AugmentConfig, TrajectoryAugmenter, grid_spacing, moment_matched_round
from trm.config import TRMConfig

B, S, D = 4, 6, 512  # per-rank batch, latent length, width


def _augmenter(step: int = 1, **kw) -> TrajectoryAugmenter:
    aug = TrajectoryAugmenter(AugmentConfig(**kw), per_rank_batch=B, device=torch.device("cpu"), seed=0)
    aug.step = step
    return aug


def _carry(n: int) -> LatentCarry:
    return LatentCarry(torch.ones(n, S, D), -torch.ones(n, S, D))


def _perturb(aug: TrajectoryAugmenter, carry: LatentCarry, reset: torch.Tensor) -> LatentCarry:
    """What one training step does: draw the noise (outside the forward), then apply it."""
    aug.noise = aug.draw(reset, carry, carry.z_H.shape)
    return aug(carry, reset)


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
    after = _perturb(aug, before, reset)
    changed = (after.z_H != before.z_H).flatten(1).any(1) & (after.z_L != before.z_L).flatten(1).any(1)
    expected = reset & (torch.arange(n) >= B)
    assert changed.tolist() == expected.tolist()


def test_noise_std_matches_sigma():
    """eps = sigma * N(0, I): the sample std over 2 x 6 x 512 x 4 values is sigma within 3%
    (the relative standard error of a std estimate from n = 24576 values is ~1/sqrt(2n) = 0.45%)."""
    aug = _augmenter(mode="single_perturbed_ce", n_perturbed=1, sigma=1e-2)
    before = _carry(B)
    after = _perturb(aug, before, torch.ones(B, dtype=torch.bool))
    noise = torch.cat([(after.z_H - before.z_H).flatten(), (after.z_L - before.z_L).flatten()])
    assert abs(noise.mean().item()) < 1e-3 * 1e-2 * 10
    assert noise.std().item() == pytest.approx(1e-2, rel=0.03)


@pytest.mark.parametrize("where, h, l", [("z_H", True, False), ("z_L", False, True), ("both", True, True)])
def test_where_selects_the_state(where, h, l):
    aug = _augmenter(mode="single_perturbed_ce", n_perturbed=1, sigma=0.1, where=where)
    before = _carry(B)
    after = _perturb(aug, before, torch.ones(B, dtype=torch.bool))
    assert (not torch.equal(after.z_H, before.z_H)) == h
    assert (not torch.equal(after.z_L, before.z_L)) == l


def test_curriculum_clean_warmup_then_linear_ramp():
    aug = _augmenter(mode="single_perturbed_ce", clean_warmup_steps=10, ramp_steps=20)
    assert [aug.sigma_scale(s) for s in (1, 10, 11, 20, 30, 31, 1000)] == [0.0, 0.0, 0.05, 0.5, 1.0, 1.0, 1.0]
    aug.step = 5
    before = _carry(B)
    state = aug.generator.get_state()
    after = _perturb(aug, before, torch.ones(B, dtype=torch.bool))
    assert torch.equal(after.z_H, before.z_H) and torch.equal(after.z_L, before.z_L)  # clean warm-up: exact zeros
    assert torch.equal(aug.generator.get_state(), state)  # and no noise drawn
    assert aug.window_metrics(end_window=True) == {}  # nothing to report


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
    first = _perturb(aug, _carry(B), torch.ones(B, dtype=torch.bool))
    again = _augmenter(mode="single_perturbed_ce", sigma=0.1)
    again.load_state_dict(state)
    second = _perturb(again, _carry(B), torch.ones(B, dtype=torch.bool))
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
    carry = multi.initial_carry(rep)
    aug.prepare(carry)
    _, loss_multi, *_ = multi(carry, rep)
    assert loss_multi.item() / (3 * B) == pytest.approx(loss_plain.item() / B, abs=1e-12)
    assert math.isfinite(loss_plain.item())


# --- bfloat16: the perturbation the model receives ---------------------------------------------

@pytest.mark.parametrize("dtype, value, spacing", [
    (torch.bfloat16, 1.0, 2**-7), (torch.bfloat16, 0.75, 2**-8), (torch.bfloat16, -3.0, 2**-6),
    (torch.float16, 1.0, 2**-10), (torch.float32, 1.0, 2**-23),
])
def test_grid_spacing_is_the_step_to_the_next_value(dtype, value, spacing):
    """Known answers from the formats (bf16: 8 significant bits, fp16: 11, fp32: 24); z + spacing
    is representable and z + spacing / 2 rounds back to z (ties to even; z's mantissa is even)."""
    z = torch.tensor([value], dtype=dtype)
    s = grid_spacing(z)
    assert s.item() == spacing
    assert (z.float() + s).to(dtype).float().item() == value + spacing
    assert (z.float() + s / 2).to(dtype).item() == value


@pytest.mark.parametrize("a", [0.05, 0.4, 1.0, 1.5, 3.3])
def test_moment_matched_round_keeps_the_second_moment(a):
    """Test hypothesis: the rounded value k * u has E[(k u)^2] = t^2 for t = a * u, k integer with
    the sign of t. 10^6 coins; the relative standard error of the mean of (k u)^2 / t^2 is at most
    sqrt((1 - p) / (p n)) = 0.014 at a = 0.05 (p = a^2), so 6% is > 4 s.e."""
    u, n = 2.0**-8, 1_000_000
    target = torch.full((n,), -a * u)
    coin = torch.rand(n, generator=torch.Generator().manual_seed(0))
    out = moment_matched_round(target, torch.tensor(u), coin)
    k = out / u
    assert torch.equal(k, torch.round(k)) and bool((k <= 0).all())
    assert set(torch.unique(k).tolist()) <= {-math.floor(a), -math.floor(a) - 1}
    assert (out.double().square().mean() / (a * u) ** 2).item() == pytest.approx(1.0, rel=0.06)


def _dtype_model(batch: int, dtype: str, hidden: int = 64, seq_len: int = 16):
    cfg = TRMConfig(hidden_size=hidden, num_heads=2, expansion=2, H_cycles=1, L_cycles=1, L_layers=1, halt_max_steps=4, puzzle_emb_ndim=hidden, puzzle_emb_len=1, forward_dtype=dtype)
    cfg.derive_from_data(vocab_size=5, seq_len=seq_len, num_puzzle_identifiers=1024, batch_size=batch)
    torch.manual_seed(0)
    return build_model(cfg)


def _puzzles(n: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """n distinct random rows (identifier = row number + seed * n, so every batch is new data)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, 5, (n, seq_len), generator=g, dtype=torch.int32),
        "labels": torch.randint(1, 5, (n, seq_len), generator=g).to(torch.int32),
        "puzzle_identifiers": torch.arange(n, dtype=torch.int32),
    }


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_forward_receives_the_configured_sigma(dtype):
    """Test hypothesis: in a bf16 forward the carry the core receives differs from the clean reset
    carry by RMS sigma (within 20%), where nearest rounding of z + sigma * eps (the former
    behaviour) gives far less and leaves most entries unchanged; the logged window metrics are
    this same measurement. 32 rows x 17 x 64 x 2 = 69632 entries; at sigma 1e-3 about 2-6% of
    them flip by one bf16 step (spacing 4e-3..8e-3 for |z| in [0.5, 2)), ~2000 flips, so the
    measured RMS has a relative standard error of ~2-3%."""
    sigma, n = 1e-3, 32
    model = _dtype_model(n, dtype)
    aug = TrajectoryAugmenter(AugmentConfig(mode="single_perturbed_ce", n_perturbed=1, sigma=sigma), n, torch.device("cpu"), seed=0)
    aug.install(model.model)
    seen: list[tuple[LatentCarry, LatentCarry]] = []
    model.model.perturb = lambda carry, reset: seen.append((carry, aug(carry, reset))) or seen[-1][1]
    aug.step = 1
    batch = _puzzles(n, 16, seed=0)
    carry = model.initial_carry(batch)
    aug.prepare(carry)
    model(carry, batch)
    (clean, noisy), = seen
    assert noisy.z_H.dtype == getattr(torch, dtype)
    diff = torch.cat([(noisy.z_H.float() - clean.z_H.float()).flatten(), (noisy.z_L.float() - clean.z_L.float()).flatten()])
    rms = diff.double().square().mean().sqrt().item()
    assert rms == pytest.approx(sigma, rel=0.2)
    logged = aug.window_metrics(end_window=True)
    assert logged["train/aug_perturbation_rms"] == pytest.approx(rms, rel=1e-6)
    assert logged["train/aug_effective_sigma"] == pytest.approx(1.0, rel=0.2)
    if dtype == "bfloat16":  # the former nearest rounding of the same size of noise
        eps = torch.randn(diff.numel() // 2, generator=torch.Generator().manual_seed(1)).view_as(clean.z_H)
        nearest = torch.cat([((z.float() + sigma * eps).to(torch.bfloat16).float() - z.float()).flatten() for z in (clean.z_H, clean.z_L)])
        assert (nearest == 0).float().mean().item() > 0.7
        spacing = torch.cat([grid_spacing(z).flatten() for z in (clean.z_H, clean.z_L)])
        steps = diff / spacing
        assert torch.equal(steps, torch.round(steps))  # whole bf16 steps: nothing rounds away later
        assert (diff == 0).float().mean().item() > 0.5  # sparse: most entries keep their value


# --- row groups halt together ------------------------------------------------------------------

@pytest.mark.parametrize("grouped", [True, False])
def test_copies_of_a_row_stay_on_the_same_puzzle(grouped):
    """Test hypothesis: with halt_groups = copies (what `install` sets) the clean and perturbed
    copies of each row halt on copy 0's decision, so after 30 steps of fresh batches they still
    hold the same puzzle; with per-slot halting (the former behaviour) they drift apart. The q
    head is given random weights so q_halt is near 0 and differs between perturbed copies, and
    exploration is on, so slots halt at different segments."""
    n_rows, copies = 8, 4
    model = _dtype_model(copies * n_rows, "float32", hidden=16, seq_len=4)
    model.model.config.halt_exploration_prob = 0.5
    with torch.no_grad():
        model.model.inner.q_head.weight.normal_(0, 1.0)
        model.model.inner.q_head.bias.zero_()
    aug = TrajectoryAugmenter(AugmentConfig(mode="multi_perturbed_ce", n_perturbed=copies - 1, sigma=0.5), n_rows, torch.device("cpu"), seed=0)
    aug.install(model.model)
    assert model.model.halt_groups == copies
    if not grouped:
        model.model.halt_groups = 1
    torch.manual_seed(0)
    carry, same, halts = None, [], []
    for step in range(1, 31):
        batch = aug.replicate(_puzzles(n_rows, 4, seed=step))
        batch["puzzle_identifiers"] += step * n_rows
        carry = model.initial_carry(batch) if carry is None else carry
        aug.step = step
        aug.prepare(carry)
        with torch.no_grad():
            carry, *_ = model(carry, batch)
        halts.append(carry.halted.clone())
        ids = carry.current_data["puzzle_identifiers"].view(copies, n_rows)
        inputs = carry.current_data["inputs"].view(copies, n_rows, -1)
        same.append(bool((ids == ids[0]).all() and (inputs == inputs[0]).all()))
    halted = torch.stack(halts).view(30, copies, n_rows)
    if grouped:
        assert all(same)
        assert torch.equal(halted, halted[:, :1].expand_as(halted))
        assert 0 < halted[:, 0].float().mean().item() < 1  # slots did halt, at varying steps
    else:
        assert not same[-1] and not all(same)


def test_prepare_is_required_before_the_forward():
    aug = _augmenter(mode="single_perturbed_ce")
    with pytest.raises(RuntimeError, match="call prepare"):
        aug(_carry(B), torch.ones(B, dtype=torch.bool))


def test_window_metrics_cover_the_whole_logging_window():
    """Inside a window nothing is read; at its end the RMS ratio pools every step's draws (float32
    carry: received = drawn up to round-off, ratio 1 within 1e-4), then the window restarts."""
    aug = _augmenter(mode="single_perturbed_ce", sigma=0.1)
    for _ in range(3):
        _perturb(aug, _carry(B), torch.ones(B, dtype=torch.bool))
        assert aug.window_metrics(end_window=False) == {}
    out = aug.window_metrics(end_window=True)
    assert out["train/aug_effective_sigma"] == pytest.approx(1.0, abs=1e-4)
    assert out["train/aug_perturbation_rms"] == pytest.approx(0.1, rel=0.01)  # 3 x 2 x 4 x 6 x 512 values
    assert aug.window_metrics(end_window=True) == {}
