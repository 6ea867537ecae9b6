"""Finite-time Lyapunov spectrum of a batched step map by the Benettin / QR method.

Given a step map f acting on a batch of states, f: (B, *S) -> (B, *S), example by example, the
finite-time Lyapunov exponents of the trajectory z_{t+1} = f(z_t) are

    lambda_i = (1/T) * sum_{t=1..T} log |R_ii(t)|,

where J_t Q_{t-1} = Q_t R_t is the QR step of the k-frame Q pushed through the Jacobians
J_t = Df(z_{t-1}) (Benettin, Galgani, Giorgilli & Strelcyn 1980; Shimada & Nagashima 1979).
Exponents are per step (one application of f), natural log; lambda_1 is the leading one.

Algorithm (`lyapunov_log_r`):
  1. Draw k Gaussian tangents per example (B, k, *S) from `generator`, orthonormalise them by QR
     of the flattened (B, D, k) matrix (D = prod(S)).
  2. Each step pushes the state and the k tangents with one forward-mode JVP per tangent,
     `torch.func.jvp` under `torch.func.vmap` over the tangent axis, so the primal f(z) runs once
     per step for all k tangents.
  3. Every `t_ons` steps (and after the last step), re-orthonormalise with a batched
     `torch.linalg.qr` on (B, D, k) and record log|R_ii| with |R_ii| clamped at 1e-30 (so a
     collapsed direction gives a large negative number, not -inf).
  4. `warmup` steps before step 1 do the same without recording, so the frame can align with
     the Oseledets directions and the state can leave its initial transient.
`lyapunov_spectrum` divides the recorded sums by the number of steps and sorts each example's
exponents descending. QR every t_ons > 1 steps gives the same numbers in exact arithmetic (the
R factor of a product is the product of the R factors), see Geist, Parlitz & Lauterborn (1990)
for the comparison of QR-based methods; it only trades cost against overflow risk.

Parameter advice:
  - k: the number of leading exponents wanted (k <= D). k = 1 is lambda_1 and avoids the QR.
  - n_steps: the statistical error of a chaotic exponent falls like 1/sqrt(T) (average over the
    batch to reduce it further); the transient bias falls like 1/T. Use T >= 1000 on known
    systems; on a model the analysis fixes T to the inference budget.
  - t_ons: keep 1 unless profiling says the QR matters; growth over t_ons steps must stay inside
    the dtype's range (|lambda| * t_ons << 88 in float32, << 709 in float64).
  - warmup: a few times 1/(lambda_1 - lambda_2) steps aligns the frame; on a model the analysis
    measures from the initial carry, so 0.

Known failure modes:
  - Transients: without warmup the estimate carries an O(1/T) error from the initial frame and the
    off-attractor start (visible as the 1/T decay on a non-normal linear map).
  - Near-zero exponents (the flow direction of a time-discretised ODE, marginal modes) converge
    only like 1/T, not 1/sqrt(T); their sign at finite T is not meaningful below that scale.
  - float32 drift: each QR has relative error ~1e-7 and the trajectory itself diverges from the
    float64 one after ~log(1e7)/lambda_1 steps; finite-time exponents agree statistically, not
    pointwise. Sums of log|R_ii| are accumulated in float64 either way.
  - Attention: `F.scaled_dot_product_attention` has no forward-mode derivative in the fused CPU
    and flash kernels. Callers must run the estimator under
    `torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)`.
  - Speed: forward-mode AD in torch 2.13 (CPU) gives a plain operand (a weight, a constant) a
    zero tangent. Elementwise ops with one (x * 1.4, x + eps) then take a slow path (~0.5 ms per
    op), and a matmul with a plain weight materialises a zero weight tangent and multiplies by it
    (about 3 matmuls instead of 2). Tiny maps are dominated by this overhead, not arithmetic;
    models should push tangents with closed-form JVPs where it matters.

References:
  G. Benettin, L. Galgani, A. Giorgilli, J.-M. Strelcyn, Meccanica 15, 9-20 and 21-30 (1980).
  I. Shimada, T. Nagashima, Prog. Theor. Phys. 61, 1605-1616 (1979).
  K. Geist, U. Parlitz, W. Lauterborn, Prog. Theor. Phys. 83, 875-893 (1990).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from runtime.errors import ConfigError
from runtime.progress import progress_bar

StepFn = Callable[[Tensor], Tensor]

ESTIMATOR = "benettin_qr_jvp"
LOG_R_FLOOR = 1e-30  # |R_ii| is clamped here before the log
_DTYPES = (torch.float32, torch.float64)


@dataclass
class LyapunovResult:
    """Raw output of `lyapunov_log_r`, enough to resume the computation or re-window it.

    log_r: (B, n_blocks, k) sums of log|R_ii| over each QR block, in the tangents' column order
        (not sorted); block b covers steps [b*t_ons, min((b+1)*t_ons, n_steps)).
    state: (B, *S) state after the last step, or None unless `return_state`.
    tangents: (B, k, *S) orthonormal frame after the last step, or None unless `return_state`.
    """

    log_r: Tensor
    n_steps: int
    k: int
    t_ons: int
    warmup: int
    state: Tensor | None = None
    tangents: Tensor | None = None

    def exponents(self) -> Tensor:
        """(B, k) exponents per step, sorted descending, in the dtype of `log_r`."""
        total = self.log_r.sum(dim=1, dtype=torch.float64) / self.n_steps
        return total.sort(dim=-1, descending=True).values.to(self.log_r.dtype)

    def meta(self) -> dict:
        """The settings a stored spectrum must carry (analysis §2: scales are estimator-specific)."""
        return {
            "estimator": ESTIMATOR,
            "k": self.k,
            "t_ons": self.t_ons,
            "n_steps": self.n_steps,
            "warmup": self.warmup,
            "dtype": str(self.log_r.dtype).removeprefix("torch."),
        }


def _check_args(z0: Tensor, n_steps: int, k: int, t_ons: int, warmup: int) -> int:
    """Validate the arguments; returns the flattened state dimension D per example."""
    if z0.dtype not in _DTYPES:
        raise ConfigError(f"the Lyapunov state must be float32 or float64, got {z0.dtype}")
    if z0.dim() < 2:
        raise ConfigError(f"the Lyapunov state must be batched as (B, ...), got shape {tuple(z0.shape)}")
    dim = math.prod(z0.shape[1:])
    if n_steps < 1:
        raise ConfigError(f"n_steps must be at least 1 to estimate an exponent, got {n_steps}")
    if k < 1 or k > dim:
        raise ConfigError(f"k={k} tangent vectors do not fit a state of dimension {dim} per example; use 1 <= k <= {dim}")
    if t_ons < 1:
        raise ConfigError(f"t_ons (steps between re-orthonormalisations) must be at least 1, got {t_ons}")
    if warmup < 0:
        raise ConfigError(f"warmup must be a number of steps >= 0, got {warmup}")
    return dim


def orthonormalise(tangents: Tensor) -> tuple[Tensor, Tensor]:
    """QR-orthonormalise each example's frame.

    Args:
        tangents: (B, k, *S) frame, column i = tangents[:, i].
    Returns:
        (Q, log_r): Q (B, k, *S) orthonormal frame spanning the same nested subspaces;
        log_r (B, k) = log(max(|R_ii|, 1e-30)).
    """
    batch, k = tangents.shape[:2]
    flat = tangents.reshape(batch, k, -1)  # (B, k, D)
    if k == 1:
        # QR of one column is a normalisation; skip LAPACK.
        norm = flat.norm(dim=-1).clamp_min(LOG_R_FLOOR)  # (B, 1)
        return tangents / norm.view(batch, 1, *([1] * (tangents.dim() - 2))), norm.log()
    q, r = torch.linalg.qr(flat.transpose(1, 2))  # q (B, D, k), r (B, k, k)
    log_r = r.diagonal(dim1=-2, dim2=-1).abs().clamp_min(LOG_R_FLOOR).log()
    return q.transpose(1, 2).reshape(tangents.shape), log_r


def push_tangents(step: StepFn, state: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the state and its tangents: (f(z), Df(z) v_i for each i).

    Args:
        step: f, (B, *S) -> (B, *S), example by example.
        state: z (B, *S).
        tangents: (B, k, *S).
    Returns:
        (f(z) (B, *S), pushed tangents (B, k, *S)). The primal runs once for all k tangents.
    """
    if tangents.shape[1] == 1:
        new_state, pushed = torch.func.jvp(step, (state,), (tangents[:, 0],))
        return new_state, pushed.unsqueeze(1)

    def jvp_one(tangent: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(step, (state,), (tangent,))

    # out_dims=None for the primal: it does not depend on the vmapped tangent, so it is computed
    # once and comes back unbatched.
    return torch.func.vmap(jvp_one, in_dims=1, out_dims=(None, 1))(tangents)


def _advance(step: StepFn, state: Tensor, frame: Tensor, n_steps: int, t_ons: int, record: list | None, bar: tqdm | None) -> tuple[Tensor, Tensor]:
    """Run n_steps steps with QR every t_ons steps and after the last; append log_r (B, k) per block."""
    for t in range(n_steps):
        new_state, frame = push_tangents(step, state, frame)
        if new_state.shape != state.shape:
            raise ValueError(f"step changed the state shape from {tuple(state.shape)} to {tuple(new_state.shape)}")
        state = new_state
        if (t + 1) % t_ons == 0 or t + 1 == n_steps:
            frame, log_r = orthonormalise(frame)
            if record is not None:
                record.append(log_r)
        if bar is not None:
            bar.update(1)
    return state, frame


def lyapunov_log_r(
    step: StepFn,
    z0: Tensor,
    *,
    n_steps: int,
    k: int = 8,
    t_ons: int = 1,
    warmup: int = 0,
    generator: torch.Generator | None = None,
    tangents: Tensor | None = None,
    return_state: bool = False,
    progress: bool = False,
) -> LyapunovResult:
    """Per-block sums of log|R_ii| along the trajectory of `step` from `z0` (algorithm: module doc).

    Args:
        step: f, maps (B, *S) to (B, *S) example by example (no coupling across the batch); must
            be differentiable by `torch.func.jvp` and batchable by `torch.func.vmap`.
        z0: (B, *S) initial states, float32 or float64; the whole computation uses this dtype.
        n_steps: number of recorded steps T >= 1.
        k: number of tangent vectors (exponents), 1 <= k <= D = prod(S).
        t_ons: steps between QR re-orthonormalisations (>= 1).
        warmup: unrecorded steps before the T recorded ones (state and frame both advance).
        generator: seeds the Gaussian initial frame (ignored when `tangents` is given).
        tangents: (B, k, *S) frame to continue from (e.g. the `tangents` of a previous result);
            it is re-orthonormalised first without recording.
        return_state: keep the final state and frame in the result (to continue segment by
            segment; the frame costs B*k*D memory).
        progress: show a tqdm bar over warmup + n_steps steps.
    Returns:
        LyapunovResult with log_r (B, ceil(T / t_ons), k) in the dtype of z0.
    Raises:
        ConfigError: wrong dtype, unbatched z0, n_steps < 1, k outside [1, D], t_ons < 1,
            warmup < 0.
        ValueError: `tangents` of the wrong shape, or a step that changes the state shape.
    """
    _check_args(z0, n_steps, k, t_ons, warmup)
    frame_shape = (z0.shape[0], k, *z0.shape[1:])
    if tangents is None:
        tangents = torch.randn(frame_shape, generator=generator, dtype=z0.dtype, device=z0.device)
    elif tuple(tangents.shape) != frame_shape:
        raise ValueError(f"tangents must have shape {frame_shape} (B, k, *S), got {tuple(tangents.shape)}")
    record: list[Tensor] = []
    # No autograd graph: forward-mode AD does not need one, and parameters that require grad
    # would otherwise make every primal op record a backward graph.
    with torch.no_grad(), progress_bar(total=warmup + n_steps, desc="lyapunov", disable=not progress, leave=False) as bar:
        frame, _ = orthonormalise(tangents.to(z0.dtype))
        state = z0
        if warmup:
            state, frame = _advance(step, state, frame, warmup, t_ons, None, bar)
        state, frame = _advance(step, state, frame, n_steps, t_ons, record, bar)
    return LyapunovResult(
        log_r=torch.stack(record, dim=1),
        n_steps=n_steps,
        k=k,
        t_ons=t_ons,
        warmup=warmup,
        state=state if return_state else None,
        tangents=frame if return_state else None,
    )


def lyapunov_spectrum(
    step: StepFn,
    z0: Tensor,
    *,
    n_steps: int,
    k: int = 8,
    t_ons: int = 1,
    warmup: int = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Finite-time Lyapunov exponents per step (natural log) of `step` along the orbit of `z0`.

    Arguments as in `lyapunov_log_r`. Returns (B, k) in the dtype of z0, each row sorted
    descending. Raises ConfigError for invalid settings (k > D, n_steps < 1, ...).
    For a flow sampled every dt time units, divide by dt for exponents per unit time.
    """
    result = lyapunov_log_r(step, z0, n_steps=n_steps, k=k, t_ons=t_ons, warmup=warmup, generator=generator, progress=progress)
    return result.exponents()


def seed_method_lambda1(step: StepFn, z0: Tensor, n_steps: int, generator: torch.Generator | None = None) -> Tensor:
    """Leading exponent by the published analysis notebook's method, for comparison only.

    One Gaussian tangent per example (drawn like `lyapunov_log_r` with k = 1, so the same
    generator state gives the same start), pushed by `torch.autograd.functional.jvp` (the
    double-backward trick) and renormalised every step; lambda_1 = mean log of the norm growth.
    Slower than `lyapunov_log_r(k=1)` and numerically the same algorithm.

    Args: step, z0 (B, *S), n_steps >= 1, generator as in `lyapunov_log_r`.
    Returns: (B,) lambda_1 per step in the dtype of z0.
    """
    _check_args(z0, n_steps, 1, 1, 0)
    batch = z0.shape[0]
    tangent = torch.randn(z0.shape, generator=generator, dtype=z0.dtype, device=z0.device)
    norm_shape = (batch, *([1] * (z0.dim() - 1)))
    tangent = tangent / tangent.reshape(batch, -1).norm(dim=1).clamp_min(LOG_R_FLOOR).view(norm_shape)
    total = torch.zeros(batch, dtype=torch.float64, device=z0.device)
    state = z0
    for _ in range(n_steps):
        state, pushed = torch.autograd.functional.jvp(step, state, tangent)
        norm = pushed.reshape(batch, -1).norm(dim=1).clamp_min(LOG_R_FLOOR)  # (B,)
        total += norm.log().double()
        tangent = (pushed / norm.view(norm_shape)).detach()
        state = state.detach()
    return (total / n_steps).to(z0.dtype)
