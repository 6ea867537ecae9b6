"""Adaptive computation time (ACT) wrapper around a `RecurrentCore`, with the official semantics.

One call of `ACTModel.forward` runs one segment for every slot of the batch. Slots that halted on
the previous call restart from (H_init, L_init) and take the new batch's row; the other slots keep
their state and data and the new batch's row for them is discarded (official behaviour: "epochs"
count loader batches). In eval mode halting ignores the Q head: every example runs exactly
`halt_max_steps` segments, which is how the published accuracies were measured. Two training-only
hooks serve trajectory augmentation (training/augment.py): `perturb` adds noise to freshly reset
rows, and `halt_groups` > 1 makes the copies of a replicated row halt together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from model_core.core import Batch, LatentCarry, RecurrentCore


@dataclass
class ACTCarry:
    """Carry across optimiser steps: latent state, segment counter (B,) int32, halted (B,) bool and
    the data each slot is working on."""

    inner: LatentCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: Batch


class ACTModel(nn.Module):
    """Official `..._ACTV1` wrapper: its only submodule is `inner`, so keys read `inner.*`."""

    def __init__(self, inner: RecurrentCore):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        # Optional trajectory augmentation: called as perturb(carry, reset_mask) right after the
        # reset, it returns the carry with noise on the freshly reset rows. None = off (the
        # forward is then exactly the official one).
        self.perturb: Callable[[LatentCarry, torch.Tensor], LatentCarry] | None = None
        # Trajectory augmentation replicates the batch copy-major (halt_groups copies of B rows).
        # In training the copies of a row then halt together, when copy 0 does, so they stay on
        # the same puzzle (training/augment.py says why copy 0). 1 = every slot on its own.
        self.halt_groups = 1

    @property
    def puzzle_emb(self):
        return self.inner.puzzle_emb

    def initial_carry(self, batch: Batch) -> ACTCarry:
        """Every slot starts 'halted', so the first forward loads data into all of them."""
        B = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return ACTCarry(
            inner=self.inner.empty_carry(B, device),
            steps=torch.zeros(B, dtype=torch.int32, device=device),
            halted=torch.ones(B, dtype=torch.bool, device=device),
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: ACTCarry, batch: Batch) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        cfg = self.config
        inner = self.inner.reset_carry(carry.halted, carry.inner)
        if self.perturb is not None and self.training:
            inner = self.perturb(inner, carry.halted)
        steps = torch.where(carry.halted, 0, carry.steps)
        data = {k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v) for k, v in carry.current_data.items()}

        inner, out = self.inner(inner, data)
        outputs = {"logits": out.logits, "q_halt_logits": out.q_halt_logits, "q_continue_logits": out.q_continue_logits}

        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= cfg.halt_max_steps
            halted = is_last
            if self.training and cfg.halt_max_steps > 1:
                if cfg.no_ACT_continue:
                    halted = halted | (out.q_halt_logits > 0)
                else:
                    halted = halted | (out.q_halt_logits > out.q_continue_logits)
                # Exploration: with prob. p a slot must run at least U{2..halt_max_steps} segments.
                explore = torch.rand_like(out.q_halt_logits) < cfg.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=cfg.halt_max_steps + 1)
                halted = halted & (steps >= min_steps)
                if not cfg.no_ACT_continue:
                    # Q-learning target from one more segment of the *updated* state (no replay, no
                    # target network): continue is worth the best value reachable next segment.
                    _, nxt = self.inner(inner, data)
                    target = torch.where(is_last, nxt.q_halt_logits, torch.maximum(nxt.q_halt_logits, nxt.q_continue_logits))
                    outputs["target_q_continue"] = torch.sigmoid(target)
                if self.halt_groups > 1:  # (G * B,) -> copy 0's decision for every copy
                    halted = halted.view(self.halt_groups, -1)[0].repeat(self.halt_groups)
        return ACTCarry(inner, steps, halted, data), outputs
