"""Lyapunov-regularised training ("gradient flossing", Engelken, NeurIPS 2023).

Every `interval` optimizer steps, the top-k finite-time Lyapunov exponents of the recursion are
estimated on a sub-batch and

    floss = weight * mean_rows sum_{i=1..k} (lambda_i - target)^2

is back-propagated on top of the ACT loss: the gradient flows through the state trajectory, the
tangent propagation (forward-mode JVPs, `torch.func.jvp`) and every QR step. Engelken et al.
push the exponents of RNNs towards 0 to keep gradients alive; here the same term can push a
reasoning recursion towards any `target` (0: marginal; < 0: settling, the regime of successes in
analysis.md section 9).

Estimator (`ftle`, analysis.md section 2 with t_ons = 1): k Gaussian tangents, QR-orthonormalised;
each of `window` sub-updates pushes the state z = (z_H, z_L) (B, 2, S, D) and the frame (B, k, 2,
S, D); QR after each one; lambda_i = (1/window) sum_t log max(|R_ii(t)|, 1e-30), per module
evaluation, sorted descending. The diagnostics estimator (`diagnostics.adapters.step_map.
segment_ftle`) computes the same numbers without a graph (tests compare them); `training` cannot
import `diagnostics` (diagnostics imports training), so this module has its own, differentiable,
copy of the loop.

Choices (config group `regularize`, `conf/regularize/flossing.yaml`):
- Start state: the *current* ACT carry after this step's forward (detached), rows drawn at
  random from this rank's slots, each with the data its slot is working on. The slots sit at
  every segment of their trajectories, so over training the term sees the whole inference
  trajectory, not only its start (the first segments carry little of the success/failure
  signal, analysis.md section 9). The window starts at a segment boundary (the schedule's first
  sub-update) and follows the schedule cyclically.
- Precision: float32 at least (the state and the input injection are upcast; the layers cast
  their weights to the input dtype), as analysis.md section 1 asks: bf16 tangent growth is noise.
- The puzzle-embedding table gets no flossing gradient (its rows are read as in eval mode): its
  SignSGD optimizer would turn any gradient, however small, into a full-size step. The token
  embedding and every level do get it.
- Randomness: rows and frame come from a generator seeded by (seed, rank, step), so the global
  stream (ACT exploration) is untouched and a resumed run redraws exactly the same numbers.
- torchrun: each rank flosses its own sub-batch; its term is divided by the world size before
  backward, so the summed gradients (training/loop.py) are the gradient of the mean over ranks.
  Logged values (train/floss_loss, train/floss_lambda_1..k) are means over ranks, on the steps
  where the term ran (every step with interval 1; choose log_interval a multiple of interval).
- EMA: the term is estimated on the live weights; the EMA averages the updated weights as usual.
- A non-finite estimate skips the backward (a warning; the logged values are then NaN).

Cost: one window costs roughly `window` sub-updates of the sub-batch forward, (1 + k) times,
plus their backward, and forward-mode AD has a large per-op overhead on CPU. Measured on the
tiny Sudoku preset (benchmarks/bench_flossing.py) and stated in the README.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from model_core.act import ACTCarry
from model_core.core import LatentCarry, RecurrentCore
from model_core.layers import math_sdpa
from runtime import dist as rdist
from runtime.errors import ConfigError
from runtime.logging import get_logger

log = get_logger(__name__)

REGULARIZE_MODES = ("none", "flossing")
LOG_R_FLOOR = 1e-30  # |R_ii| is clamped here before the log (as the diagnostics estimator does)
StepFn = Callable[[Tensor], Tensor]


@dataclass
class FlossingConfig:
    """Lyapunov regularisation settings (config group `regularize`); see the module docstring.

    k: exponents estimated and pushed (the top k). window: sub-updates (module evaluations) the
    exponents are averaged over. target: the value each exponent is pulled towards (per
    sub-update, natural log). weight: factor of the term. interval: optimizer steps between
    estimates (1 = every step). sub_batch: rows per rank (at most the per-rank batch).
    """

    mode: str = "none"
    k: int = 1
    window: int = 8
    target: float = 0.0
    weight: float = 1.0
    interval: int = 1
    sub_batch: int = 8

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def validate(self) -> None:
        """Raise ConfigError on a value no run can use."""
        if self.mode not in REGULARIZE_MODES:
            raise ConfigError(f"regularize.mode={self.mode!r} is not one of {', '.join(REGULARIZE_MODES)}")
        for key in ("k", "window", "interval", "sub_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"regularize.{key}={getattr(self, key)} must be >= 1")
        if not self.weight >= 0.0:  # also catches NaN
            raise ConfigError(f"regularize.weight={self.weight} must be >= 0")
        if not math.isfinite(self.target):
            raise ConfigError(f"regularize.target={self.target} must be finite")


# --- the differentiable estimator -----------------------------------------------------------------

def orthonormalise(frame: Tensor) -> tuple[Tensor, Tensor]:
    """QR of each example's frame (B, k, *S) -> (Q (B, k, *S), log max(|R_ii|, 1e-30) (B, k)).

    Differentiable (reduced QR of a tall (D, k) matrix has a backward); k = 1 is a normalisation.
    """
    batch, k = frame.shape[:2]
    flat = frame.reshape(batch, k, -1)  # (B, k, D)
    if k == 1:
        norm = flat.norm(dim=-1).clamp_min(LOG_R_FLOOR)  # (B, 1)
        return frame / norm.view(batch, 1, *([1] * (frame.dim() - 2))), norm.log()
    q, r = torch.linalg.qr(flat.transpose(1, 2))  # q (B, D, k), r (B, k, k)
    log_r = r.diagonal(dim1=-2, dim2=-1).abs().clamp_min(LOG_R_FLOOR).log()
    return q.transpose(1, 2).reshape(frame.shape), log_r


def push(step: StepFn, state: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
    """(f(z), Df(z) v_i for each column i) for z (B, *S), frame (B, k, *S), by `torch.func.jvp`
    (vmapped over k; the primal runs once). Differentiable w.r.t. z, the frame and whatever f closes
    over (the model's parameters): reverse mode through forward mode."""
    if frame.shape[1] == 1:
        new, pushed = torch.func.jvp(step, (state,), (frame[:, 0],))
        return new, pushed.unsqueeze(1)
    return torch.func.vmap(lambda t: torch.func.jvp(step, (state,), (t,)), in_dims=1, out_dims=(None, 1))(frame)


def ftle(steps: Sequence[StepFn], z0: Tensor, frame: Tensor) -> Tensor:
    """Finite-time Lyapunov exponents along z_t = steps[t-1](z_{t-1}), with a graph.

    Args:
        steps: the T = len(steps) maps applied in order, each (B, *S) -> (B, *S) row by row.
        z0: (B, *S) start state (float32 or float64).
        frame: (B, k, *S) start tangents (orthonormalised here first, not recorded), k <= prod(S).
    Returns:
        (B, k) exponents per step, (1/T) sum_t log|R_ii(t)|, each row sorted descending, in z0's
        dtype. For a constant linear map A the values tend to log|eigenvalues of A| (exactly, when
        A is diagonal and the frame starts on its axes).
    Raises:
        ConfigError: no steps, or k outside [1, prod(S)].
    """
    dim = math.prod(z0.shape[1:])
    if not steps:
        raise ConfigError("the Lyapunov window needs at least one step")
    if not 1 <= frame.shape[1] <= dim:
        raise ConfigError(f"k={frame.shape[1]} tangent vectors do not fit a state of dimension {dim} per example; use 1 <= k <= {dim}")
    frame, _ = orthonormalise(frame.to(z0.dtype))
    z, total = z0, torch.zeros(z0.shape[0], frame.shape[1], dtype=z0.dtype, device=z0.device)
    for step in steps:
        z, frame = push(step, z, frame)
        frame, log_r = orthonormalise(frame)
        total = total + log_r
    return (total / len(steps)).sort(dim=-1, descending=True).values


# --- the recursion as step maps ---------------------------------------------------------------------

@contextlib.contextmanager
def table_lookup(core: RecurrentCore) -> Iterator[None]:
    """Read the sparse puzzle embedding as in eval mode (a plain table row, no gradient), so a
    sub-batch of any size can be embedded without touching the training batch's local copy."""
    table = getattr(core, "puzzle_emb", None)
    was_training = table is not None and table.training
    if was_training:
        table.eval()
    try:
        yield
    finally:
        if was_training:
            table.train()


def recursion_steps(core: RecurrentCore, x: Tensor, window: int) -> list[StepFn]:
    """The first `window` sub-updates of the schedule (cyclically) as maps on z (B, 2, S, D),
    z[:, 0] = z_H, z[:, 1] = z_L, with the input injection x (B, S, D) held fixed."""
    schedule = core.sub_updates()
    cos_sin = core.cos_sin()

    def make(kind: str) -> StepFn:
        def step(z: Tensor) -> Tensor:
            out = core.apply(kind, LatentCarry(z[:, 0], z[:, 1]), x, cos_sin)
            return torch.stack((out.z_H, out.z_L), dim=1)
        return step

    return [make(schedule[t % len(schedule)]) for t in range(window)]


def carry_exponents(core: RecurrentCore, carry: LatentCarry, batch: dict[str, Tensor], window: int, frame: Tensor) -> Tensor:
    """(B, k) exponents of `window` sub-updates from `carry` (z_H, z_L each (B, S, D), detached)
    on `batch` (inputs, puzzle_identifiers), in float32 at least, with a graph to the parameters.
    `frame`: (B, k, 2, S, D) start tangents."""
    dtype = torch.promote_types(core.config.dtype, torch.float32)
    with table_lookup(core):
        x = core.input_embeddings(batch["inputs"], batch["puzzle_identifiers"]).to(dtype)  # (B, S, D)
    z0 = torch.stack((carry.z_H, carry.z_L), dim=1).detach().to(dtype)  # (B, 2, S, D)
    with math_sdpa():  # the fused attention kernels have no forward-mode derivative
        return ftle(recursion_steps(core, x, window), z0, frame.to(dtype))


# --- the training term --------------------------------------------------------------------------------

class Flosser:
    """Adds the flossing gradient to the parameters' .grad every `interval` steps (call after the
    ACT loss's backward, before the gradients are all-reduced) and reports the estimate."""

    def __init__(self, cfg: FlossingConfig, per_rank_batch: int, seed: int, rank: int, world_size: int):
        cfg.validate()
        if cfg.enabled and cfg.sub_batch > per_rank_batch:
            raise ConfigError(f"regularize.sub_batch={cfg.sub_batch} exceeds the per-rank batch of {per_rank_batch} rows")
        self.cfg, self.seed, self.rank, self.world_size = cfg, seed, rank, world_size
        self.pending: Tensor | None = None  # this step's (floss, lambda_1..k), not yet all-reduced

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def due(self, step: int) -> bool:
        return self.enabled and step % self.cfg.interval == 0

    def generator(self, step: int) -> torch.Generator:
        """CPU generator for this rank and step (resumes draw the same rows and frames)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + 7919 * (self.rank + 1)) * 100_003 + step)

    def backward(self, core: RecurrentCore, carry: ACTCarry, step: int) -> None:
        """When due, estimate the exponents on a sub-batch of `carry` and back-propagate the term."""
        if not self.due(step):
            return
        cfg = self.cfg
        gen = self.generator(step)
        device = carry.inner.z_H.device
        rows = torch.randperm(carry.inner.z_H.shape[0], generator=gen)[: cfg.sub_batch].sort().values.to(device)
        start = LatentCarry(carry.inner.z_H[rows], carry.inner.z_L[rows])
        batch = {k: carry.current_data[k][rows] for k in ("inputs", "puzzle_identifiers")}
        frame = torch.randn((cfg.sub_batch, cfg.k, 2, *start.z_H.shape[1:]), generator=gen).to(device)
        lam = carry_exponents(core, start, batch, cfg.window, frame)  # (b, k)
        floss = cfg.weight * (lam - cfg.target).square().sum(-1).mean()
        if math.isfinite(floss.item()):
            (floss / self.world_size).backward()
        else:
            log.warning("step %d: non-finite flossing estimate; its backward is skipped", step)
        self.pending = torch.cat([floss.detach().reshape(1), lam.detach().mean(0)]).to(torch.float64)

    def metrics(self) -> dict[str, float]:
        """train/floss_loss and train/floss_lambda_1..k of this step's estimate, means over ranks;
        {} on steps where the term did not run (so a resumed run logs exactly what the straight
        run logs). Collective on the steps where it ran (the same steps on every rank)."""
        if self.pending is None:
            return {}
        values = self.pending
        self.pending = None
        rdist.all_reduce_sum_([values])
        values = (values / self.world_size).tolist()
        return {"train/floss_loss": values[0], **{f"train/floss_lambda_{i + 1}": v for i, v in enumerate(values[1:])}}
