"""Plain rollouts and what the rollout studies (displacement, extended, basin) read from them.

A `Trajectory` is the fixed unroll of analysis §1 (halting recorded, not applied) with, after
every segment t = 1..S:

    preds (B, S, L)         argmax answer at the puzzle positions
    q_halt, q_continue      (B, S) halting logits, float32
    drift (B, S, 2)         ||z(t) - z(t-1)||_2 of z_H (column 0) and z_L (column 1) over the whole
                            (P+L) x D tensor, float64, z(0) = the starting state (analysis §3)

The rest of this module is what more than one study derives from such rollouts, kept here so
that no study imports another:

- success per segment (the one place diagnostics decides "solved"): `check_success_rule`
  (refuse a rule the dataset's kind does not have) and `success_by_segment`, which apply the
  rules of the dataset's `puzzles.kinds.PuzzleKind`: `exact` (every labelled cell right) for
  every kind, `valid_path` (analysis §1) for Maze;
- `segment_record`: the per-example arrays of one batch's rollout (drift, success, halting
  logits, givens), the record of the displacement and extended studies;
- `late_drift`, `settling_threshold` (Otsu's tau on log10 late drift, analysis §3) with their
  defaults, `first_solved_after` and `givens_count`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diagnostics.adapters.step_map import ReadoutLog, SegmentReadouts, SubUpdateMap
from diagnostics.estimators.statistics import otsu_threshold
from puzzles.kinds import SUCCESS_RULES, PuzzleKind
from runtime.errors import ConfigError

if TYPE_CHECKING:
    from diagnostics.inputs import StudyInputs

SUDOKU_PAD, SUDOKU_BLANK = 0, 1
# settling defaults shared by the displacement and extended studies (analysis §3)
LATE_WINDOW = 4  # trailing segments averaged into d_late
OTSU_BINS = 256  # histogram bins of Otsu's threshold
DRIFT_FLOOR = 1e-10  # drift below this counts as this before log10 (exact zeros)


@dataclass
class Trajectory:
    """Per-segment read-outs and drift of one batch's rollout; `state` is the final (B, 2, S, D);
    `late_zH` (B, K, S, D) float64 is z_H after each of the last K segments (None unless asked)."""

    readouts: SegmentReadouts
    drift: Tensor
    state: Tensor
    late_zH: Tensor | None = None
    norm_zH: Tensor | None = None  # (B, S) float64 ||z_H(t)|| after each segment

    @property
    def drift_zH(self) -> Tensor:
        return self.drift[..., 0]

    @property
    def drift_zL(self) -> Tensor:
        return self.drift[..., 1]


@torch.no_grad()
def record_rollout(smap: SubUpdateMap, segments: int, z0: Tensor | None = None, keep_last: int = 0) -> Trajectory:
    """Roll `segments` segments from z0 (default: the reset carry), recording read-outs and drift,
    and z_H after each of the last `keep_last` segments (for the recurrence test).

    The states visited are exactly those of `diagnostics.adapters.step_map.rollout` (same sub-update
    schedule, same arithmetic); only the per-segment drift is added.
    """
    if segments < 1:
        raise ConfigError(f"segments={segments} must be >= 1")
    smap.reset()
    z = smap.initial_state() if z0 is None else z0
    log = ReadoutLog()
    drift = torch.empty(z.shape[0], segments, 2, dtype=torch.float64, device=z.device)
    norm = torch.empty(z.shape[0], segments, dtype=torch.float64, device=z.device)
    late = []
    for t in range(segments):
        start = z
        for _ in range(smap.sub_updates_per_segment):
            z = smap.step(z)
        drift[:, t] = (z - start).to(torch.float64).flatten(2).norm(dim=-1)
        norm[:, t] = z[:, 0].to(torch.float64).flatten(1).norm(dim=-1)
        log.add(smap.core, z)
        if t >= segments - keep_last:
            late.append(z[:, 0].to(torch.float64))
    return Trajectory(log.stacked(), drift, z, torch.stack(late, 1) if late else None, norm)


# --- success rules -------------------------------------------------------------------------------

def check_success_rule(rule: str, kind: PuzzleKind | None = None) -> None:
    """Refuse a success rule that no puzzle kind has, or (when the dataset's `kind` is known)
    one that this kind does not have (valid_path is Maze's).

    Raises:
        ConfigError: one line naming `study.success` and the choices.
    """
    if rule not in SUCCESS_RULES:
        raise ConfigError(f"study.success={rule!r} is not one of {list(SUCCESS_RULES)}")
    if kind is not None:
        kind.success_rule(rule, "(study.success)")


def success_by_segment(preds: np.ndarray, labels: np.ndarray, inputs: np.ndarray, rule: str, kind: PuzzleKind) -> np.ndarray:
    """(B, S) bool success after each segment under the `kind`'s `rule`.

    preds (B, S, L) int, labels (B, L) with ignored cells = IGNORE_LABEL_ID (-100), inputs (B, L).
    Raises ConfigError for a rule `check_success_rule` refuses.
    """
    check_success_rule(rule, kind)
    b, s, length = preds.shape
    flat = kind.success_rule(rule)(preds.reshape(b * s, length).astype(np.int64),
                                   np.repeat(inputs.astype(np.int64), s, axis=0), np.repeat(labels.astype(np.int64), s, axis=0))
    return np.asarray(flat, bool).reshape(b, s)


def sample_success(inputs: StudyInputs, positions: np.ndarray | slice, preds: np.ndarray, rule: str) -> np.ndarray:
    """(B, T) success after each segment of the sample rows `positions`, preds (B, T, L)."""
    return success_by_segment(preds, inputs.labels[positions], inputs.inputs[positions], rule, inputs.kind)


def first_solved_after(success: np.ndarray, start: int) -> np.ndarray:
    """(N,) int64: the first segment t (1-based) with start < t <= T at which success (N, T) holds,
    -1 where there is none."""
    later = np.asarray(success, dtype=bool)[:, start:]
    hit = later.any(1)
    return np.where(hit, later.argmax(1) + start + 1, -1).astype(np.int64)


# --- per-example record of a rollout ------------------------------------------------------------------

def givens_count(inputs: np.ndarray) -> np.ndarray:
    """(N,) number of given cells of Sudoku inputs (N, L): tokens other than pad 0 and blank 1."""
    return ((inputs != SUDOKU_PAD) & (inputs != SUDOKU_BLANK)).sum(-1).astype(np.int64)


def segment_record(inputs: StudyInputs, rows: slice, batch: dict[str, Tensor], segments: int, rule: str,
                   max_period: int = 0, window: int = 0) -> dict[str, np.ndarray]:
    """The per-example arrays of one batch's rollout of `segments` segments from the reset carry:

        index (B,) int64, exact / success (B,) bool at the last segment, drift_zH / drift_zL
        (B, S) float64, exact_by_segment / success_by_segment (B, S) bool (success under `rule`),
        q_halt / q_continue (B, S) float32, givens (B,) int64, norm_zH (B, S) float64 (||z_H||
        after each segment, the scale of the resolution floor), and with max_period > 0
        recurrence (B, max_period) float64 (`recurrence_distances` of z_H over the last segments).
    """
    keep = max_period + window if max_period > 0 else 0
    traj = record_rollout(SubUpdateMap(inputs.core, batch), segments, keep_last=keep)
    preds = traj.readouts.preds.cpu().numpy()
    exact = sample_success(inputs, rows, preds, "exact")
    success = exact if rule == "exact" else sample_success(inputs, rows, preds, rule)
    return {
        "index": inputs.index[rows].astype(np.int64),
        "exact": exact[:, -1],
        "success": success[:, -1],
        "drift_zH": traj.drift_zH.cpu().numpy(),
        "drift_zL": traj.drift_zL.cpu().numpy(),
        "exact_by_segment": exact,
        "success_by_segment": success,
        "q_halt": traj.readouts.q_halt.float().cpu().numpy(),
        "q_continue": traj.readouts.q_continue.float().cpu().numpy(),
        "givens": givens_count(inputs.inputs[rows]),
        "norm_zH": traj.norm_zH.cpu().numpy(),
        **({"recurrence": recurrence_distances(traj.late_zH.cpu().numpy(), max_period, window)} if keep else {}),
    }


# --- recurrence: fixed points, periodic traps, aperiodic wandering -------------------------------------

def recurrence_distances(late: np.ndarray, max_period: int, window: int) -> np.ndarray:
    """(N, P) r_p = max over the last `window` segments t of ||x_t - x_{t-p}|| / ||x_t||, p = 1..P.

    late (N, K, ...) : the state (z_H) after each of the last K >= P + window segments. r_p near 0
    means the trajectory returns to where it was p segments earlier, for the whole window.
    """
    n, k = late.shape[:2]
    if k < max_period + window:
        raise ValueError(f"need {max_period + window} late states for max_period={max_period}, window={window}; got {k}")
    x = np.asarray(late, dtype=np.float64).reshape(n, k, -1)
    norm = np.maximum(np.linalg.norm(x[:, k - window:], axis=-1), np.finfo(np.float64).tiny)  # (N, W)
    out = np.empty((n, max_period))
    for p in range(1, max_period + 1):
        diff = np.linalg.norm(x[:, k - window:] - x[:, k - window - p:k - p], axis=-1)  # (N, W)
        out[:, p - 1] = (diff / norm).max(axis=1)
    return out


def classify_recurrence(r: np.ndarray, tol: float) -> np.ndarray:
    """(N,) int64 period from r (N, P) of `recurrence_distances`: 1 = fixed point (r_1 <= tol),
    p >= 2 = periodic with the smallest such p (r_p <= tol, r_1 > tol), 0 = aperiodic within P."""
    hit = np.asarray(r) <= tol
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0).astype(np.int64)


# --- settling ------------------------------------------------------------------------------------------

def late_drift(drift: np.ndarray, window: int) -> np.ndarray:
    """(N,) mean of drift (N, S) over its last `window` segments."""
    return drift[:, -window:].mean(axis=1)


RESOLUTION_ULPS = 4  # drift within this many units in the last place of ||z_H|| is round-off


def resolution_floor(norm_zH: np.ndarray | None, dtype: str, drift_floor: float) -> np.ndarray | float:
    """The per-example floor of late drift: RESOLUTION_ULPS x eps(dtype) x ||z_H|| (N,), and never
    below `drift_floor`; just `drift_floor` when the norms were not recorded (older runs).

    **Choice** (analysis §3 leaves it open): a trajectory that has settled in float32 moves by
    round-off, ~eps x ||z_H|| per segment, or by exactly 0 when a segment repeats the state to
    the last bit. Flooring at a fixed 1e-10 turns those two into separate clusters of log10
    d_late, and Otsu can then split between them, calling settled trajectories unsettled;
    flooring at the dtype's resolution merges them into one settled cluster."""
    if norm_zH is None:
        return drift_floor
    return np.maximum(RESOLUTION_ULPS * np.finfo(np.dtype(dtype)).eps * np.asarray(norm_zH, np.float64), drift_floor)


def floored_log_drift(drift: np.ndarray, floor: np.ndarray | float) -> np.ndarray:
    """log10 max(drift, floor), elementwise (floor per example or one number)."""
    return np.log10(np.maximum(np.asarray(drift, np.float64), floor))


def settling_threshold(log_d: np.ndarray, *, threshold: float | None, drift_floor: float, otsu_bins: int) -> tuple[float, str]:
    """(log10 tau, "otsu" | "fixed") for the floored log10 late drift `log_d` (N,): log10 of the
    fixed `threshold` (drift units, floored at `drift_floor`) when given, else Otsu's threshold
    (`otsu_bins` bins) on `log_d`; NaN when Otsu is undefined (fewer than two distinct values)."""
    if threshold is not None:
        return math.log10(max(threshold, drift_floor)), "fixed"
    return otsu_threshold(log_d, bins=otsu_bins), "otsu"
