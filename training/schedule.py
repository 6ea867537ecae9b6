"""Learning-rate schedule: linear warmup, then cosine decay to a floor (official TRM/HRM rule).

The training loop increments its step counter *before* using it, so the first optimizer update
runs at step 1 and gets `base_lr / warmup_steps`, never 0. With the default `min_ratio = 1.0`
(every published Sudoku/Maze run) the rate is constant after warmup. Each optimizer is scheduled
from its own base rate (AdamATan2 from `lr`, the puzzle-embedding SignSGD from `puzzle_emb_lr`);
the optimizers are constructed with lr = 0 and this module sets the rate before every step.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer


def cosine_schedule_with_warmup_lr(
    base_lr: float,
    step: int,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 1.0,
    num_cycles: float = 0.5,
) -> float:
    """Learning rate at 1-indexed `step`.

    step < W:  base_lr * step / W.
    else:      progress = (step - W) / max(1, total_steps - W)
               base_lr * (r + max(0, (1 - r) * 0.5 * (1 + cos(pi * num_cycles * 2 * progress))))
    with W = warmup_steps and r = min_ratio; num_cycles = 0.5 is one half cosine from base_lr down
    to r * base_lr at total_steps. Past total_steps the formula goes on and the cosine rises
    again; the official loop stops training at total_steps, so that branch is never used there.
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    return base_lr * (min_ratio + max(0.0, (1.0 - min_ratio) * cosine))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set `lr` on every param group of `optimizer`."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def apply_lr_schedule(
    optimizer: Optimizer,
    step: int,
    *,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 1.0,
    num_cycles: float = 0.5,
) -> float:
    """Compute the scheduled rate for 1-indexed `step`, write it into `optimizer`, return it."""
    lr = cosine_schedule_with_warmup_lr(
        base_lr, step, warmup_steps, total_steps, min_ratio=min_ratio, num_cycles=num_cycles
    )
    set_lr(optimizer, lr)
    return lr
