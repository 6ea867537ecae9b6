"""Trajectory augmentation for training (analysis.md section 8): noise on the initial latent.

Each time a batch slot restarts (the ACT reset to H_init / L_init), its fresh carry gets zero-mean
noise, eps = sigma * N(0, I), on z_H, z_L or both. The data, the ACT loss and the optimiser are
unchanged; there is no extra loss term. Modes:

- `none`: off. `ACTModel.perturb` stays None and the batch is not replicated, so training is
  bit-identical to a build without this module.
- `single_perturbed_ce`: every trajectory is perturbed (`n_perturbed` copies of the batch, 1 by
  default), no clean branch.
- `multi_perturbed_ce`: the batch is replicated (1 + n_perturbed) times along the batch axis; copy
  0 stays clean, copies 1..n are perturbed. The loss is divided by the replicated global batch,
  so the cross-entropy is averaged over trajectories. The per-rank batch the model (and its sparse
  puzzle embedding) is built for grows by the same factor.

sigma can be one value (`gaussian`), drawn per trajectory from LogUniform[sigma_min, sigma_max]
(`log_uniform`), or zero with probability p_clean (`mixture`). A curriculum keeps the first
`clean_warmup_steps` optimizer steps clean and then ramps sigma linearly over `ramp_steps`.

Row groups halt together. With more than one copy, the copies of a loader row (rows r, r + B,
r + 2B, ... of the copy-major batch) restart together, when copy 0 halts (`ACTModel.halt_groups`).
Halting per slot would let each copy halt at its own segment, take the next batch's row and end
up on another puzzle, so "clean vs perturbed" would no longer compare trajectories of one
puzzle. Copy 0 decides (rather than "all copies halted") because in `multi_perturbed_ce` it is
the clean trajectory: it keeps exactly the halting policy of an un-augmented run, and the
perturbed copies get the same segment budget; waiting for the slowest copy would instead let the
noise lengthen every clean trajectory. With one copy (`none`, single with n = 1) nothing changes.

torch.compile. All randomness is drawn outside the compiled forward: the training loop calls
`prepare(carry)` before each step, which draws this step's per-row sigma and noise from the
augmenter's own generator (so switching the augmentation on never changes the random stream the
ACT exploration draws from) and folds the curriculum factor in. The hook inside the forward then
only adds two tensors, so neither the step counter nor the generator reaches the compiled code:
no guard on a Python int (no recompile per step) and no graph break.

bfloat16. A bf16 carry has 8 significant bits: near |z| = 1 neighbouring values are 2^-8..2^-7
(4e-3..8e-3) apart, and H_init / L_init sit exactly on that grid. Rounding z + sigma * eps (sigma
~1e-3) to nearest leaves ~98% of the entries with |z| >= 0.5 unchanged; the received RMS was
0.06 / 0.27 / 0.79 / 1.0 x sigma at sigma 1e-5 / 1e-4 / 1e-3 / 1e-2 (D = 512), neither the
configured size nor linear in sigma. Carrying perturbed rows in float32 is not an
option inside one batched bf16 forward (one dtype per tensor; an fp32 carry would make the whole
segment fp32 for every row), and the next bf16 operation would round again. Instead the noise is
put on the bf16 grid by second-moment-matched stochastic rounding: with u the grid spacing at the
reset value and a = |sigma eps| / u, the perturbation is sign(eps) * k * u, k in {floor(a),
floor(a) + 1}, with P(floor(a) + 1) = (a^2 - floor(a)^2) / (2 floor(a) + 1), so that E[delta^2 |
eps] = (sigma eps)^2 exactly (it is then ~1.0 x sigma at every sigma). The perturbation the model receives then has zero mean, independent
coordinates and covariance sigma^2 I, the same first and second moments as sigma * N(0, I), so
every linear read-out of it has the configured spread (for sigma << u it is a sparse vector of
+-u flips, about (sigma/u)^2 of the entries; a row needs sigma >~ u / sqrt(S * D) to get any).
Plain stochastic rounding would keep E[delta | eps] instead but inflate the RMS to
~sqrt(sigma * u), 2-3x sigma at 1e-3. What the model's own bf16 arithmetic does with the
perturbation after it has entered is part of the dynamics under study. float32 carries take
z + sigma * eps as is. Each step the perturbation the model actually receives is measured
(RMS of perturbed carry - clean carry, as the forward computes it) and logged per logging window
beside the drawn sigma * eps: `train/aug_effective_sigma` (their RMS ratio, 1 = the configured
sigma) and `train/aug_perturbation_rms` (this rank's rows; rank 0 logs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from model_core.core import Batch, LatentCarry
from runtime.errors import ConfigError

AUGMENT_MODES = ("none", "single_perturbed_ce", "multi_perturbed_ce")
WHERE = ("z_H", "z_L", "both")
DISTRIBUTIONS = ("gaussian", "log_uniform", "mixture")


@dataclass
class AugmentConfig:
    """Trajectory augmentation settings (config group `augment`); see the module docstring."""

    mode: str = "none"
    n_perturbed: int = 3
    sigma: float = 1e-3
    where: str = "both"
    distribution: str = "gaussian"
    sigma_min: float = 1e-5
    sigma_max: float = 1e-2
    p_clean: float = 0.5
    clean_warmup_steps: int = 0
    ramp_steps: int = 0

    def validate(self) -> None:
        """Raise ConfigError on a value no augmentation can run with."""
        for key, allowed in (("mode", AUGMENT_MODES), ("where", WHERE), ("distribution", DISTRIBUTIONS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"augment.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.mode != "none" and self.n_perturbed < 1:
            raise ConfigError(f"augment.n_perturbed={self.n_perturbed} must be >= 1 with augment.mode={self.mode}")
        if self.sigma < 0 or not 0 < self.sigma_min <= self.sigma_max:
            raise ConfigError(
                f"augment sigmas must satisfy sigma >= 0 and 0 < sigma_min <= sigma_max "
                f"(got sigma={self.sigma}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"
            )
        if not 0.0 <= self.p_clean <= 1.0:
            raise ConfigError(f"augment.p_clean={self.p_clean} must be in [0, 1]")
        if self.clean_warmup_steps < 0 or self.ramp_steps < 0:
            raise ConfigError("augment.clean_warmup_steps and augment.ramp_steps must be >= 0")

    @property
    def copies(self) -> int:
        """How many trajectories each loader row is trained on (1 when off)."""
        if self.mode == "none":
            return 1
        return self.n_perturbed + (1 if self.mode == "multi_perturbed_ce" else 0)

    @property
    def clean_copies(self) -> int:
        """Number of leading copies that stay unperturbed (1 for multi, else 0)."""
        return 1 if self.mode == "multi_perturbed_ce" else 0


def grid_spacing(z: torch.Tensor) -> torch.Tensor:
    """Distance from each entry of `z` to the next representable value away from zero in z's
    dtype (float32 result, same shape); for z = 0 the spacing of [0.5, 1) / 2 (any multiple of it
    is representable near 0)."""
    _, exponent = torch.frexp(z.to(torch.float32))  # z = m * 2^e, 0.5 <= |m| < 1
    return torch.exp2((exponent - 1).to(torch.float32)) * torch.finfo(z.dtype).eps  # eps = 2^-mantissa bits


def moment_matched_round(target: torch.Tensor, spacing: torch.Tensor, coin: torch.Tensor) -> torch.Tensor:
    """Round `target` (float32) to a multiple k * spacing with E[result^2] = target^2 (module
    docstring); `coin` ~ U[0, 1) of target's shape, `spacing` broadcastable to it."""
    a = target.abs() / spacing
    lo = torch.floor(a)
    p_up = (a * a - lo * lo) / (2 * lo + 1)
    return torch.sign(target) * (lo + (coin < p_up).to(a.dtype)) * spacing


@dataclass
class Noise:
    """One step's perturbation: float32 (N, S, D) deltas for z_H and z_L (None for a state that is
    not perturbed), zero on rows that do not restart this step or stay clean."""

    z_H: torch.Tensor | None
    z_L: torch.Tensor | None


def add_noise(z: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """z (N, S, D) in the carry dtype plus a float32 delta, added in float32 and returned in z's
    dtype (exact for a delta on z's grid; delta 0 leaves z unchanged)."""
    if delta is None:
        return z
    return (z.to(torch.promote_types(z.dtype, torch.float32)) + delta).to(z.dtype)


class TrajectoryAugmenter:
    """Replicates batches and perturbs freshly reset carry rows; install with `install(act_model)`.

    Rows of the replicated batch are ordered copy-major: row r belongs to copy r // B for a
    per-rank loader batch of B rows. Before each forward the training loop calls
    `prepare(carry)` with `step` (1-indexed optimizer step, drives the curriculum) already set;
    the forward then calls the augmenter on the reset carry, which adds the prepared noise.
    """

    def __init__(self, cfg: AugmentConfig, per_rank_batch: int, device: torch.device, seed: int):
        cfg.validate()
        self.cfg = cfg
        self.per_rank_batch = per_rank_batch
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.step = 0
        self.noise: Noise | None = None
        self.core: Any = None  # the RecurrentCore whose H_init / L_init the reset rows take
        # Sums over the current logging window (device tensors, read once per step by the loop):
        # squared perturbation the model receives, squared sigma * eps drawn, entries perturbed.
        self._window = torch.zeros(3, dtype=torch.float64, device=device)

    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "none"

    def install(self, act_model: Any) -> None:
        """Set `act_model.perturb` (an `ACTModel`) to this augmenter, or None when off, and make
        the copies of each loader row halt together (`halt_groups`, module docstring)."""
        act_model.perturb = self if self.enabled else None
        act_model.halt_groups = self.cfg.copies
        self.core = act_model.inner

    def replicate(self, batch: Batch) -> Batch:
        """(B, ...) tensors -> (copies * B, ...), copy-major; the batch itself when copies == 1."""
        if self.cfg.copies == 1:
            return batch
        return {k: torch.cat([v] * self.cfg.copies, dim=0) for k, v in batch.items()}

    def sigma_scale(self, step: int) -> float:
        """Curriculum factor in [0, 1] at 1-indexed optimizer `step`."""
        if step <= self.cfg.clean_warmup_steps:
            return 0.0
        if self.cfg.ramp_steps == 0:
            return 1.0
        return min(1.0, (step - self.cfg.clean_warmup_steps) / self.cfg.ramp_steps)

    def row_sigmas(self, reset: torch.Tensor) -> torch.Tensor:
        """Per-row noise scale (N,) float32: 0 for clean copies and rows that did not just reset."""
        cfg, n = self.cfg, reset.shape[0]
        device = reset.device
        scale = self.sigma_scale(self.step)
        if cfg.distribution == "log_uniform":
            u = torch.rand(n, generator=self.generator, device=device)
            sigma = torch.exp(math.log(cfg.sigma_min) + u * (math.log(cfg.sigma_max) - math.log(cfg.sigma_min)))
        else:
            sigma = torch.full((n,), cfg.sigma, device=device)
        if cfg.distribution == "mixture":
            sigma = torch.where(torch.rand(n, generator=self.generator, device=device) < cfg.p_clean, 0.0, sigma)
        perturbed = reset & (torch.arange(n, device=device) >= cfg.clean_copies * self.per_rank_batch)
        return torch.where(perturbed, sigma * scale, 0.0)

    def draw(self, reset: torch.Tensor, base: LatentCarry, shape: torch.Size) -> Noise:
        """This step's noise for a carry of `shape` (N, S, D) whose rows flagged in `reset` (N,)
        bool restart from `base` (z_H, z_L broadcastable to `shape`, in the carry dtype: the
        init vectors, or the reset carry itself). Adds the step's statistics to the window.
        Noise is drawn for all N rows (selecting the reset ones would sync with the device)."""
        if self.sigma_scale(self.step) == 0.0:  # clean warm-up: exact zeros, no random draws
            # (one tensor per state: compiled code guards on whether the two alias)
            return Noise(*(torch.zeros(shape, device=reset.device) if self._targets(s) else None for s in ("z_H", "z_L")))
        sigma = self.row_sigmas(reset).view(-1, 1, 1)
        deltas = []
        for name, z in (("z_H", base.z_H), ("z_L", base.z_L)):
            if not self._targets(name):
                deltas.append(None)
                continue
            target = sigma * torch.randn(shape, generator=self.generator, device=reset.device, dtype=torch.float32)
            delta = target
            if torch.finfo(z.dtype).bits < 32:  # bf16 / fp16 carry: put the noise on its grid
                coin = torch.rand(shape, generator=self.generator, device=reset.device, dtype=torch.float32)
                delta = moment_matched_round(target, grid_spacing(z), coin)
            # What the forward will receive: add_noise on the reset value, minus the clean value.
            clean = torch.broadcast_to(z, shape)
            seen = add_noise(clean, delta).to(torch.float32) - clean.to(torch.float32)
            entries = (sigma > 0).sum() * shape[1] * shape[2]
            self._window += torch.stack([seen.square().sum().double(), target.square().sum().double(), entries.double()])
            deltas.append(delta)
        return Noise(*deltas)

    def prepare(self, carry: Any) -> None:
        """Draw the noise for the forward about to run on `carry` (an `ACTCarry`): its `halted`
        rows restart from the installed core's H_init / L_init. Called outside torch.compile."""
        base = LatentCarry(self.core.H_init, self.core.L_init)
        self.noise = self.draw(carry.halted, base, carry.inner.z_H.shape)

    def __call__(self, carry: LatentCarry, reset: torch.Tensor) -> LatentCarry:
        """The reset carry (N, S, D) plus the prepared noise (zero outside the rows of `reset`
        (N,) bool that get perturbed); tensor arithmetic only, safe inside torch.compile."""
        if self.noise is None:
            raise RuntimeError("TrajectoryAugmenter: call prepare(carry) (or set .noise = draw(...)) before the forward")
        return LatentCarry(add_noise(carry.z_H, self.noise.z_H), add_noise(carry.z_L, self.noise.z_L))

    def window_metrics(self, end_window: bool) -> dict[str, float]:
        """At the end of a logging window (`end_window`): `train/aug_effective_sigma` (RMS
        received / RMS drawn) and `train/aug_perturbation_rms` over the window's steps, then a new
        window; {} inside a window (no device sync) or when no noise was drawn in it."""
        if not end_window:
            return {}
        seen_sq, drawn_sq, count = self._window.tolist()
        self._window.zero_()
        if drawn_sq <= 0 or count <= 0:
            return {}
        return {"train/aug_effective_sigma": math.sqrt(seen_sq / drawn_sq), "train/aug_perturbation_rms": math.sqrt(seen_sq / count)}

    def _targets(self, name: str) -> bool:
        return self.cfg.where in (name, "both")

    def state_dict(self) -> dict[str, Any]:
        """Generator state (uint8 tensor) and curriculum step, loadable with weights_only=True."""
        return {"generator": self.generator.get_state(), "step": int(self.step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
