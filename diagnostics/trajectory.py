"""Plain rollouts that record what the displacement, extended and basin studies read per segment.

A `Trajectory` is the fixed unroll of analysis §1 (halting recorded, not applied) with, after
every segment t = 1..S:

    preds (B, S, L)         argmax answer at the puzzle positions
    q_halt, q_continue      (B, S) halting logits, float32
    drift (B, S, 2)         ||z(t) - z(t-1)||_2 of z_H (column 0) and z_L (column 1) over the whole
                            (P+L) x D tensor, float64, z(0) = the starting state (analysis §3)

`success` turns predictions into per-segment success: exact match of every labelled cell, or for
Maze (vocab 6) optionally the valid-path rule (analysis §1, `puzzles.maze.valid_path`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diagnostics.adapters import SegmentReadouts, SubUpdateMap, ReadoutLog
from runtime.errors import ConfigError
from model_core.losses import IGNORE_LABEL_ID

MAZE_VOCAB = 6
SUCCESS_RULES = ("exact", "valid_path")


@dataclass
class Trajectory:
    """Per-segment read-outs and drift of one batch's rollout; `state` is the final (B, 2, S, D)."""

    readouts: SegmentReadouts
    drift: Tensor
    state: Tensor

    @property
    def drift_zH(self) -> Tensor:
        return self.drift[..., 0]

    @property
    def drift_zL(self) -> Tensor:
        return self.drift[..., 1]


@torch.no_grad()
def record_rollout(smap: SubUpdateMap, segments: int, z0: Tensor | None = None) -> Trajectory:
    """Roll `segments` segments from z0 (default: the reset carry), recording read-outs and drift.

    The states visited are exactly those of `diagnostics.adapters.rollout` (same sub-update
    schedule, same arithmetic); only the per-segment drift is added.
    """
    if segments < 1:
        raise ConfigError(f"segments={segments} must be >= 1")
    smap.reset()
    z = smap.initial_state() if z0 is None else z0
    log = ReadoutLog()
    drift = torch.empty(z.shape[0], segments, 2, dtype=torch.float64, device=z.device)
    for t in range(segments):
        start = z
        for _ in range(smap.sub_updates_per_segment):
            z = smap.step(z)
        drift[:, t] = (z - start).to(torch.float64).flatten(2).norm(dim=-1)
        log.add(smap.core, z)
    return Trajectory(log.stacked(), drift, z)


def success_by_segment(preds: np.ndarray, labels: np.ndarray, inputs: np.ndarray, rule: str, vocab_size: int) -> np.ndarray:
    """(B, S) bool success after each segment.

    preds (B, S, L) int, labels (B, L) with ignored cells = IGNORE_LABEL_ID (-100),
    inputs (B, L). rule "exact": every labelled cell right; "valid_path" (Maze only): the
    predicted grid marks a shortest S-G path on the unchanged maze, even if not the labelled one.
    """
    if rule not in SUCCESS_RULES:
        raise ConfigError(f"success rule {rule!r} is not one of {list(SUCCESS_RULES)}")
    if rule == "exact":
        mask = labels[:, None, :] != IGNORE_LABEL_ID
        return ((preds == labels[:, None, :]) | ~mask).all(-1)
    if vocab_size != MAZE_VOCAB:
        raise ConfigError(f"success=valid_path applies to Maze data (vocab {MAZE_VOCAB}); this dataset has vocab {vocab_size}")
    from puzzles.maze import valid_path  # noqa: PLC0415 (numba compile only when needed)

    b, s, length = preds.shape
    side = int(round(length**0.5))
    flat = valid_path(preds.reshape(b * s, length).astype(np.int64), np.repeat(inputs.astype(np.int64), s, axis=0), side)
    return flat.reshape(b, s)
