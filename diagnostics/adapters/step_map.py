"""A TRM/HRM checkpoint's recurrent inference as a step map on the joint latent state.

State (analysis §2): z = stack(z_H, z_L) of shape (B, 2, S, D), z[:, 0] = z_H, z[:, 1] = z_L, with
S = P + L positions. A *sub-update* is one module evaluation that changes the state:

    L-update  (z_H, z_L) -> (z_H, f_L(z_L, z_H + x))
    H-update  (z_H, z_L) -> (f_H(z_H, z_L), z_L)

with the input injection x (B, S, D) held fixed per batch (TRM: f_H = f_L = the shared net). One
ACT segment is `core.sub_updates()` in order (TRM Sudoku: (6 L, H) x 3 = 21; HRM default: L L H
L L H = 6). Exponents are therefore "per module evaluation".

`SubUpdateMap` walks that schedule: `step(z)` applies the *current* sub-update and advances, so it
can be handed to `diagnostics.estimators.lyapunov.lyapunov_log_r` with n_steps = sub-updates per
segment and continued segment by segment; `push(z, tangents)` does the same for a state and k
tangents, with the hand-written JVP of `diagnostics.adapters.fast_jvp` (`jvp_impl="manual"`) or
generic `torch.func.jvp` (`"func"`, for checking). `rollout` is the plain recurrence with
per-segment read-outs; its read-outs equal `core.forward`'s segment by segment, bit for bit. The
model must be in eval mode and run in float32 or float64 (analysis §1: bf16 tangent growth is noise).
"""
from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from diagnostics.adapters.fast_jvp import module_jvp
from diagnostics.estimators.lyapunov import orthonormalise, push_tangents
from model_core.core import Batch, LatentCarry, RecurrentCore, UpdateKind
from model_core.layers import math_sdpa
from model_core.losses import IGNORE_LABEL_ID
from runtime.errors import ConfigError
from runtime.progress import progress_bar

JvpImpl = Literal["manual", "func"]
JVP_IMPLS = ("manual", "func")
SUB_UPDATE_CONVENTION = "per module evaluation"
_DTYPES = (torch.float32, torch.float64)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def join_carry(carry: LatentCarry) -> Tensor:
    """(z_H, z_L), each (B, S, D) -> joint state (B, 2, S, D)."""
    return torch.stack((carry.z_H, carry.z_L), dim=1)


def split_state(z: Tensor) -> LatentCarry:
    """Joint state (B, 2, S, D) -> LatentCarry of two (B, S, D) views."""
    return LatentCarry(z[:, 0], z[:, 1])


@dataclass
class SegmentReadouts:
    """Read-outs after each segment: preds (B, n_seg, L) int64 = argmax of the answer logits,
    q_halt / q_continue (B, n_seg) float32 halting logits."""

    preds: Tensor
    q_halt: Tensor
    q_continue: Tensor

    def exact(self, labels: Tensor) -> Tensor:
        """(B, n_seg) bool: every non-ignored cell of `labels` (B, L) predicted right."""
        mask = (labels != IGNORE_LABEL_ID).unsqueeze(1)
        return ((self.preds == labels.unsqueeze(1)) | ~mask).all(-1)


class ReadoutLog:
    """Collects one read-out per segment and stacks them along axis 1."""

    def __init__(self) -> None:
        self.preds: list[Tensor] = []
        self.q_halt: list[Tensor] = []
        self.q_continue: list[Tensor] = []

    def add(self, core: RecurrentCore, z: Tensor) -> None:
        out = core.read_out(z[:, 0])
        self.preds.append(out.logits.argmax(-1))
        self.q_halt.append(out.q_halt_logits)
        self.q_continue.append(out.q_continue_logits)

    def stacked(self) -> SegmentReadouts:
        return SegmentReadouts(torch.stack(self.preds, 1), torch.stack(self.q_halt, 1), torch.stack(self.q_continue, 1))


class SubUpdateMap:
    """The recurrence of `core` on one batch as a stateful step map on z (B, 2, S, D).

    `step` and `push` apply the sub-update at `position` in `schedule` and advance it (cyclically,
    one segment = one pass). The stateful design lets a plain `step(z) -> z` callable follow the
    heterogeneous L/H schedule; call `reset()` before reusing the map from a segment boundary.
    The input embedding x (B, S, D) is computed once here and held fixed.
    """

    def __init__(self, core: RecurrentCore, batch: Batch):
        if core.training:
            raise ConfigError("the model must be in eval mode for dynamics studies (call .eval())")
        if core.config.dtype not in _DTYPES:
            raise ConfigError(f"dynamics run in float32 or float64, the model's forward dtype is {core.config.forward_dtype}")
        self.core = core
        with torch.no_grad():
            self.x = core.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])  # (B, S, D)
        self.cos_sin = core.cos_sin()
        self.schedule: list[UpdateKind] = core.sub_updates()
        self.position = 0

    @property
    def sub_updates_per_segment(self) -> int:
        return len(self.schedule)

    @property
    def kind(self) -> UpdateKind:
        """The sub-update `step`/`push` will apply next."""
        return self.schedule[self.position]

    def reset(self) -> None:
        self.position = 0

    def initial_state(self) -> Tensor:
        """The carry after reset, (B, 2, S, D): every row at (H_init, L_init)."""
        return join_carry(self.core.initial_carry(self.x.shape[0], self.x.device)).to(self.x.dtype)

    def apply(self, kind: UpdateKind, z: Tensor) -> Tensor:
        """One sub-update of kind `kind`, (B, 2, S, D) -> (B, 2, S, D); pure (no position change)."""
        return join_carry(self.core.apply(kind, split_state(z), self.x, self.cos_sin))

    def step(self, z: Tensor) -> Tensor:
        """Apply the current sub-update and advance; differentiable by torch.func / autograd."""
        out = self.apply(self.kind, z)
        self.position = (self.position + 1) % len(self.schedule)
        return out

    def push(self, z: Tensor, tangents: Tensor, jvp_impl: JvpImpl = "manual") -> tuple[Tensor, Tensor]:
        """Current sub-update of z (B, 2, S, D) and its JVP on tangents (B, k, 2, S, D); advances.

        "manual" uses the closed-form block JVPs (primal bit-identical to `step`); "func" uses
        `torch.func.jvp` (vmap over k) under the math SDPA backend. Runs without autograd.
        """
        kind = self.kind
        with torch.no_grad():
            if jvp_impl == "manual":
                out = self._push_manual(kind, z, tangents)
            elif jvp_impl == "func":
                with math_sdpa():
                    out = push_tangents(partial(self.apply, kind), z, tangents)
            else:
                raise ConfigError(f"jvp_impl={jvp_impl!r} is not one of {list(JVP_IMPLS)}")
        self.position = (self.position + 1) % len(self.schedule)
        return out

    def _push_manual(self, kind: UpdateKind, z: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
        z_H, z_L = z[:, 0], z[:, 1]
        d_H, d_L = tangents[:, :, 0], tangents[:, :, 1]  # (B, k, S, D)
        level = self.core.level(kind)
        if kind == "L":
            # Same additions as core.apply: hidden z_L, injection z_H + x.
            new, d_new = module_jvp(level, z_L, z_H + self.x, d_L + d_H, self.cos_sin)
            return torch.stack((z_H, new), 1), torch.stack((d_H, d_new), 2)
        new, d_new = module_jvp(level, z_H, z_L, d_H + d_L, self.cos_sin)
        return torch.stack((new, z_L), 1), torch.stack((d_new, d_L), 2)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks for reuse instead of unmapping them (process-wide).

    Tangent propagation allocates many temporaries above glibc's dynamic mmap threshold (at most
    32 MiB); each one is then a fresh mapping whose pages fault in on first touch, measured at
    ~30% of the wall time of k = 8 at batch 8 on 2 CPU threads. Raising the mmap threshold to
    1 GiB and the trim threshold to 2 GiB lets freed blocks be reused (peak memory is kept).
    Called by the study driver (`diagnostics.driver`, once per study) and the benchmark. Returns
    False, doing nothing, where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


@torch.no_grad()
def rollout(smap: SubUpdateMap, segments: int, z0: Tensor | None = None) -> tuple[Tensor, SegmentReadouts]:
    """Plain recurrence (no tangents) for `segments` segments from z0 (default: the reset carry).

    Returns (final state (B, 2, S, D), read-outs after each segment). Starts at the beginning of
    the schedule; the read-outs equal `core.forward`'s segment outputs exactly.
    """
    if segments < 1:
        raise ConfigError(f"segments={segments} must be >= 1")
    smap.reset()
    z = smap.initial_state() if z0 is None else z0
    log = ReadoutLog()
    for _ in range(segments):
        for _ in range(smap.sub_updates_per_segment):
            z = smap.step(z)
        log.add(smap.core, z)
    return z, log.stacked()


@dataclass
class SegmentFTLE:
    """Finite-time Lyapunov data of a segment-by-segment unroll (analysis §2).

    log_r_segment: (B, n_seg, k) float64, per segment the sums of log|R_ii| over its sub-updates,
        columns in frame order (unsorted), so any window of segments can be re-evaluated.
    readouts: the per-segment read-outs of the same trajectory.
    sub_updates_per_segment: module evaluations per segment (the exponents' time unit).
    state, tangents: final state (B, 2, S, D) and orthonormal frame (B, k, 2, S, D).
    """

    log_r_segment: Tensor
    readouts: SegmentReadouts
    sub_updates_per_segment: int
    k: int
    t_ons: int
    state: Tensor
    tangents: Tensor

    def exponents(self, start: int = 0, stop: int | None = None) -> Tensor:
        """(B, k) float64 exponents per sub-update over segments [start, stop), sorted descending."""
        window = self.log_r_segment[:, start:stop]
        if window.shape[1] == 0:
            raise ConfigError(f"segment window [{start}, {stop}) of a {self.log_r_segment.shape[1]}-segment unroll is empty")
        total = window.sum(1) / (window.shape[1] * self.sub_updates_per_segment)
        return total.sort(dim=-1, descending=True).values


def initial_frame(shape: tuple[int, ...], k: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Gaussian (B, k, *state) tangents drawn like `lyapunov_log_r` (same generator, same numbers)."""
    return torch.randn((shape[0], k, *shape[1:]), generator=generator, dtype=dtype, device=device)


def segment_ftle(
    smap: SubUpdateMap,
    *,
    segments: int,
    k: int = 8,
    t_ons: int = 1,
    z0: Tensor | None = None,
    tangents: Tensor | None = None,
    generator: torch.Generator | None = None,
    jvp_impl: JvpImpl = "manual",
    progress: bool = False,
) -> SegmentFTLE:
    """Benettin/QR finite-time Lyapunov spectrum along `segments` segments of the recurrence.

    Same semantics as `diagnostics.estimators.lyapunov.lyapunov_log_r` called once per segment with
    n_steps = sub-updates per segment and the frame carried over: a Gaussian frame (or `tangents`)
    is QR-orthonormalised without recording; each sub-update pushes the state and the k tangents
    (`SubUpdateMap.push`); QR every `t_ons` sub-updates of a segment and at its end, recording
    log(max(|R_ii|, 1e-30)) (`orthonormalise`), summed per segment in float64.

    Args:
        smap: the batch's map; restarted at the beginning of the schedule.
        segments: ACT segments to unroll (>= 1).
        k: tangent vectors, 1 <= k <= 2 S D.
        t_ons: sub-updates between QRs within a segment (>= 1).
        z0: (B, 2, S, D) start, default the reset carry.
        tangents: (B, k, 2, S, D) start frame, default Gaussian from `generator`.
        jvp_impl: "manual" (closed-form block JVPs) or "func" (torch.func.jvp, for checking).
        progress: tqdm bar over sub-updates.
    Raises:
        ConfigError: segments < 1, k outside [1, 2 S D], t_ons < 1, unknown jvp_impl.
    """
    z = smap.initial_state() if z0 is None else z0
    dim = z[0].numel()
    if segments < 1:
        raise ConfigError(f"segments={segments} must be >= 1")
    if not 1 <= k <= dim:
        raise ConfigError(f"k={k} tangent vectors do not fit a state of dimension {dim} per example; use 1 <= k <= {dim}")
    if t_ons < 1:
        raise ConfigError(f"t_ons (sub-updates between re-orthonormalisations) must be at least 1, got {t_ons}")
    if jvp_impl not in JVP_IMPLS:
        raise ConfigError(f"jvp_impl={jvp_impl!r} is not one of {list(JVP_IMPLS)}")
    if tangents is None:
        tangents = initial_frame(tuple(z.shape), k, z.dtype, z.device, generator)
    smap.reset()
    n_sub = smap.sub_updates_per_segment
    log = ReadoutLog()
    per_segment: list[Tensor] = []
    with torch.no_grad(), progress_bar(total=segments * n_sub, desc="ftle", disable=not progress, leave=False) as bar:
        frame, _ = orthonormalise(tangents.to(z.dtype))
        for _ in range(segments):
            total = torch.zeros(z.shape[0], k, dtype=torch.float64, device=z.device)
            for t in range(n_sub):
                z, frame = smap.push(z, frame, jvp_impl)
                if (t + 1) % t_ons == 0 or t + 1 == n_sub:
                    frame, log_r = orthonormalise(frame)
                    total += log_r.double()
                bar.update(1)
            per_segment.append(total)
            log.add(smap.core, z)
    return SegmentFTLE(torch.stack(per_segment, 1), log.stacked(), n_sub, k, t_ons, z, frame)
