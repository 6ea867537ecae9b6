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

The carry is in the model's forward dtype: in bfloat16 (the official recipes) a perturbation much
smaller than the bf16 spacing of the initial state (~4e-3 for |z| ~ 1) is partly rounded away.
The noise comes from a dedicated generator, so switching the augmentation on never changes the
random stream the ACT exploration draws from.
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


class TrajectoryAugmenter:
    """Replicates batches and perturbs freshly reset carry rows; install with `install(act_model)`.

    Rows of the replicated batch are ordered copy-major: row r belongs to copy r // B for a
    per-rank loader batch of B rows. `step` (1-indexed optimizer step) drives the curriculum and is
    set by the training loop before each forward.
    """

    def __init__(self, cfg: AugmentConfig, per_rank_batch: int, device: torch.device, seed: int):
        cfg.validate()
        self.cfg = cfg
        self.per_rank_batch = per_rank_batch
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.step = 0

    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "none"

    def install(self, act_model: Any) -> None:
        """Set `act_model.perturb` (an `ACTModel`) to this augmenter, or None when off."""
        act_model.perturb = self if self.enabled else None

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

    def __call__(self, carry: LatentCarry, reset: torch.Tensor) -> LatentCarry:
        """Add sigma_row * N(0, I) to z_H and/or z_L of the rows flagged in `reset` (N,) bool."""
        if self.sigma_scale(self.step) == 0.0:
            return carry
        sigma = self.row_sigmas(reset).view(-1, 1, 1)

        def noisy(z: torch.Tensor) -> torch.Tensor:
            math_dtype = torch.promote_types(z.dtype, torch.float32)
            eps = torch.randn(z.shape, generator=self.generator, device=z.device, dtype=math_dtype)
            return (z.to(math_dtype) + sigma.to(math_dtype) * eps).to(z.dtype)

        z_H = noisy(carry.z_H) if self.cfg.where in ("z_H", "both") else carry.z_H
        z_L = noisy(carry.z_L) if self.cfg.where in ("z_L", "both") else carry.z_L
        return LatentCarry(z_H, z_L)

    def state_dict(self) -> dict[str, Any]:
        """Generator state (uint8 tensor) and curriculum step, loadable with weights_only=True."""
        return {"generator": self.generator.get_state(), "step": int(self.step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
