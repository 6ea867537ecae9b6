"""Covariant Lyapunov vectors (CLVs) of a batched step map by Ginelli's forward-backward method.

The Gram-Schmidt (backward Lyapunov) vectors of the Benettin/QR method (`lyapunov`) form an
orthonormal frame whose nested spans are covariant, but the vectors themselves are not: only the
first one is mapped onto itself by the dynamics. The covariant Lyapunov vectors v_1(t) ... v_k(t)
are the directions that the Jacobians carry into each other, J_t v_j(t-1) ∝ v_j(t), and that grow
at the rate lambda_j forward and backward in time (Oseledets splitting). Where the dynamics is
hyperbolic they stay apart; near-tangencies of expanding and contracting directions signal
non-hyperbolic dynamics (Ginelli et al. 2007; Kuptsov & Parlitz 2012). For a constant linear map
with distinct real eigenvalues the CLVs are its eigenvectors, ordered by |eigenvalue|, while the
Gram-Schmidt vectors are the orthonormalised eigenvectors (equal only for a normal matrix).

Algorithm (`clv_along_orbit`; Ginelli, Poggi, Turchi, Chate, Livi & Politi, PRL 99, 130601, 2007):
  1. Forward (Benettin): k Gaussian tangents (or the given ones), QR-orthonormalised; each step
     pushes the state and the frame by one JVP per tangent and re-orthonormalises,
     J_t Q_{t-1} = Q_t R_t, every step (the backward pass needs every R_t). The R_t of the steps
     after the first requested time are kept (B, k, k) in float64; the frame Q_t at the requested
     times only when the vectors themselves are wanted (`keep_frames`).
  2. Backward: C_T (B, k, k) is a random upper-triangular matrix (or the given one) with unit
     columns at the last step T = max(times) + n_backward. Then for t = T, ..., min(times) + 1:
     C_{t-1} = R_t^{-1} C_t (triangular solve), each column renormalised. The columns of C_t are
     the coordinates of the CLVs in the frame Q_t: v_j(t) = Q_t c_j(t), unit vectors since Q_t
     is orthonormal; column j has entries 1..j only, so v_j lies in the span of the first j
     Gram-Schmidt vectors. Backwards, R_t^{-1} grows the j-th coordinate of column j fastest
     (by exp(-lambda_j) per step), so c_j converges to the CLV at the rate
     exp(-(lambda_{j-1} - lambda_j) n_backward).
  3. Angles between CLVs need only C: <v_i, v_j> = <c_i, c_j> because Q_t is orthonormal, so the
     angle along a long trajectory costs k x k numbers per time, not k x D.

CLVs are defined up to sign; angles are reported in [0, 90] degrees (the angle between the lines).
Order: column j is the j-th Gram-Schmidt direction, which a generic start orders by descending
exponent (as `lyapunov_spectrum` sorts them).

Parameter advice:
  - times >= a few times 1/(lambda_j - lambda_{j+1}) steps: the forward transient aligns the
    Gram-Schmidt frame (step 1) at the same rate as the Benettin spectrum.
  - n_backward: the same rule for the backward transient (step 2); the CLV at time t depends on
    the n_backward future steps, not only on the past.
  - Cost: the forward pass is the Benettin estimator with QR every step; the backward pass is
    T triangular k x k solves per example (negligible). Memory: T * B * k * k float64 for R,
    plus B * k * D per requested time with `keep_frames`.

Known failure modes:
  - Degenerate exponents (equal |eigenvalues|, complex pairs, the zero exponent of a flow next
    to another near-zero one): the CLVs inside a degenerate Oseledets subspace are not unique
    and the backward iteration does not converge to one vector; only the subspace is defined.
  - Too short windows: before convergence the "CLVs" depend on the random initial frame and C_T
    (both seeded, so results are reproducible, but not meaningful).
  - A collapsed direction (|R_jj| below 1e-30, e.g. a rank-deficient Jacobian) is clamped at
    1e-30 with its sign before the solve, so C stays finite; the CLV in that direction is then
    only the last direction the frame kept.
  - float32: the forward frame carries ~1e-7 relative error per step (as in `lyapunov`); the
    backward pass runs in float64.

References:
  F. Ginelli, P. Poggi, A. Turchi, H. Chate, R. Livi, A. Politi, Phys. Rev. Lett. 99, 130601 (2007).
  P. V. Kuptsov, U. Parlitz, J. Nonlinear Sci. 22, 727-762 (2012).
  G. Benettin, L. Galgani, A. Giorgilli, J.-M. Strelcyn, Meccanica 15, 9-20 (1980).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor

from diagnostics.estimators.lyapunov import LOG_R_FLOOR, StepFn, _check_args, push_tangents
from runtime.errors import ConfigError
from runtime.progress import progress_bar

# push(state (B, *S), tangents (B, k, *S)) -> (f(state), Df(state) tangents); one step
PushFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

ESTIMATOR = "ginelli_clv_qr_jvp"


@dataclass
class CLVResult:
    """Output of `clv_along_orbit`.

    times: the requested times (steps from z0), sorted, without duplicates.
    coefficients: (B, n_times, k, k) float64, C_t: column j = coordinates of CLV j in the
        Gram-Schmidt frame Q_t; upper triangular with unit columns.
    log_r: (B, T, k) log|R_ii| of every forward step (frame order, clamped at 1e-30), T =
        max(times) + n_backward; the Benettin data of the same run.
    frames: (B, n_times, k, *S) Gram-Schmidt frames Q_t in the dtype of z0, or None unless
        `keep_frames`.
    """

    times: tuple[int, ...]
    coefficients: Tensor
    log_r: Tensor
    frames: Tensor | None = None

    def vectors(self) -> Tensor:
        """(B, n_times, k, *S) CLVs v_j(t) = Q_t c_j(t), unit norm, in the dtype of the frames."""
        if self.frames is None:
            raise ValueError("the CLVs themselves need the frames: run clv_along_orbit with keep_frames=True")
        batch, n_times, k = self.frames.shape[:3]
        flat = self.frames.reshape(batch, n_times, k, -1).double()  # (B, n, k, D), row i = Q_t[:, i]
        vec = torch.einsum("bnid,bnij->bnjd", flat, self.coefficients)  # (B, n, k, D), row j = v_j
        vec = vec / vec.norm(dim=-1, keepdim=True).clamp_min(LOG_R_FLOOR)
        return vec.to(self.frames.dtype).reshape(self.frames.shape)

    def angles(self, i: int = 0, j: int = -1) -> Tensor:
        """(B, n_times) float64 angle in degrees, in [0, 90], between the lines of CLV i and CLV j
        (default: the most expanding and the most contracting of the k)."""
        return line_angle(self.coefficients[..., :, i], self.coefficients[..., :, j])

    def exponents(self, start: int = 0, stop: int | None = None) -> Tensor:
        """(B, k) float64 Benettin exponents per step over forward steps [start, stop), sorted
        descending (the same numbers as `lyapunov_spectrum` on that window and frame)."""
        window = self.log_r[:, start:stop].double()
        if window.shape[1] == 0:
            raise ConfigError(f"step window [{start}, {stop}) of a {self.log_r.shape[1]}-step run is empty")
        return (window.sum(1) / window.shape[1]).sort(dim=-1, descending=True).values


def line_angle(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees, in [0, 90], between the lines spanned by a and b (..., D), unit or not.

    Uses 2 atan2(|a - s b|, |a + s b|) with s = sign(a . b) on the normalised vectors, which stays
    accurate near 0 degrees where arccos(|cos|) loses half the digits.
    """
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(LOG_R_FLOOR)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(LOG_R_FLOOR)
    s = torch.where((a * b).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(a.dtype)
    return torch.rad2deg(2.0 * torch.atan2((a - s * b).norm(dim=-1), (a + s * b).norm(dim=-1)))


def alignment_error(a: Tensor, b: Tensor) -> Tensor:
    """1 - |cos(a, b)| over the last axis (..., D): 0 when a and b span the same line; about
    theta^2 / 2 for a small angle theta between the lines."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(LOG_R_FLOOR)
    return (1.0 - cos.abs()).clamp_min(0.0)  # |cos| can round to 1 + eps


def random_upper_triangular(batch: int, k: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """(batch, k, k) float64 Gaussian upper-triangular matrices with unit columns, the start C_T
    of the backward iteration (any C_T with a nonzero diagonal converges; Gaussian is generic)."""
    c = torch.randn(batch, k, k, generator=generator, dtype=torch.float64, device=device).triu()
    return c / c.norm(dim=-2, keepdim=True).clamp_min(LOG_R_FLOOR)


def _qr(tangents: Tensor) -> tuple[Tensor, Tensor]:
    """QR of each example's frame (B, k, *S): (Q (B, k, *S), R (B, k, k)) with Q_i = tangents'
    i-th orthonormalised column and pushed_j = sum_i R_ij Q_i."""
    batch, k = tangents.shape[:2]
    q, r = torch.linalg.qr(tangents.reshape(batch, k, -1).transpose(1, 2))  # q (B, D, k), r (B, k, k)
    return q.transpose(1, 2).reshape(tangents.shape), r


def _safe_r(r: Tensor) -> Tensor:
    """R (B, k, k) in float64 with |R_jj| clamped at 1e-30 (sign kept), so R^-1 is finite."""
    r = r.double()
    diag = r.diagonal(dim1=-2, dim2=-1)
    sign = torch.where(diag < 0, -1.0, 1.0).to(r.dtype)
    return r - torch.diag_embed(diag) + torch.diag_embed(sign * diag.abs().clamp_min(LOG_R_FLOOR))


def clv_along_orbit(
    step: StepFn | None,
    z0: Tensor,
    *,
    k: int,
    times: Sequence[int],
    n_backward: int,
    push: PushFn | None = None,
    generator: torch.Generator | None = None,
    tangents: Tensor | None = None,
    coefficients: Tensor | None = None,
    keep_frames: bool = False,
    progress: bool = False,
) -> CLVResult:
    """The first k CLVs (as coefficients in the Gram-Schmidt frame) at several times of one orbit
    (algorithm: module doc), from one forward and one backward pass.

    Args:
        step: f, (B, *S) -> (B, *S) example by example, differentiable by `torch.func.jvp`; may
            be None when `push` is given.
        z0: (B, *S) initial states, float32 or float64 (the forward pass runs in this dtype).
        k: number of CLVs, 1 <= k <= D = prod(S).
        times: steps from z0 at which the CLVs are wanted (each >= 0; at least one).
        n_backward: steps past max(times) that start the backward iteration (>= 1).
        push: (state, tangents (B, k, *S)) -> (next state, pushed tangents), one step; default
            `lyapunov.push_tangents(step, ...)` (torch.func.jvp). Give it for closed-form JVPs
            (e.g. `SubUpdateMap.push`); it is called max(times) + n_backward times in order.
        generator: draws the Gaussian initial frame, then C_T (ignored for what is given).
        tangents: (B, k, *S) initial frame; QR-orthonormalised first.
        coefficients: (B, k, k) initial C_T; only its upper triangle is used, columns normalised.
        keep_frames: also return the Gram-Schmidt frames at `times` (needed for `vectors()`).
        progress: tqdm bar over the forward steps.
    Returns:
        CLVResult (coefficients (B, len(times), k, k) float64, log_r (B, T, k), frames).
    Raises:
        ConfigError: wrong dtype, unbatched z0, k outside [1, D], empty or negative times,
            n_backward < 1, neither step nor push.
        ValueError: `tangents` or `coefficients` of the wrong shape; a step that changes the
            state shape.
    """
    times = tuple(sorted(set(int(t) for t in times)))
    if not times or times[0] < 0:
        raise ConfigError(f"times must name at least one step >= 0, got {list(times)}")
    if n_backward < 1:
        raise ConfigError(f"n_backward must be at least 1 step (the backward iteration starts after the last time), got {n_backward}")
    total = times[-1] + n_backward
    _check_args(z0, total, k, 1, 0)
    if push is None:
        if step is None:
            raise ConfigError("clv_along_orbit needs a step map or a push function")
        push = partial(push_tangents, step)
    batch = z0.shape[0]
    frame_shape = (batch, k, *z0.shape[1:])
    if tangents is None:
        tangents = torch.randn(frame_shape, generator=generator, dtype=z0.dtype, device=z0.device)
    elif tuple(tangents.shape) != frame_shape:
        raise ValueError(f"tangents must have shape {frame_shape} (B, k, *S), got {tuple(tangents.shape)}")
    if coefficients is None:
        coefficients = random_upper_triangular(batch, k, generator, z0.device)
    elif tuple(coefficients.shape) != (batch, k, k):
        raise ValueError(f"coefficients must have shape {(batch, k, k)} (B, k, k), got {tuple(coefficients.shape)}")

    wanted = set(times)
    kept_r: list[Tensor] = []  # R_t for t = times[0] + 1 .. total, in order
    frames: dict[int, Tensor] = {}
    log_r: list[Tensor] = []
    with torch.no_grad(), progress_bar(total=total, desc="clv", disable=not progress, leave=False) as bar:
        frame, _ = _qr(tangents.to(z0.dtype))
        state = z0
        if keep_frames and 0 in wanted:
            frames[0] = frame
        for t in range(1, total + 1):
            new_state, pushed = push(state, frame)
            if new_state.shape != state.shape:
                raise ValueError(f"step changed the state shape from {tuple(state.shape)} to {tuple(new_state.shape)}")
            state = new_state
            frame, r = _qr(pushed)
            log_r.append(r.diagonal(dim1=-2, dim2=-1).abs().clamp_min(LOG_R_FLOOR).log())
            if t > times[0]:
                kept_r.append(_safe_r(r))
            if keep_frames and t in wanted:
                frames[t] = frame
            bar.update(1)

        c = coefficients.to(device=z0.device, dtype=torch.float64).triu()
        c = c / c.norm(dim=-2, keepdim=True).clamp_min(LOG_R_FLOOR)
        found: dict[int, Tensor] = {total: c} if total in wanted else {}
        for t in range(total, times[0], -1):
            r = kept_r[t - times[0] - 1]  # R_t
            c = torch.linalg.solve_triangular(r, c, upper=True)  # C_{t-1} = R_t^-1 C_t
            c = c / c.norm(dim=-2, keepdim=True).clamp_min(LOG_R_FLOOR)
            if t - 1 in wanted:
                found[t - 1] = c
    return CLVResult(
        times=times,
        coefficients=torch.stack([found[t] for t in times], dim=1),
        log_r=torch.stack(log_r, dim=1),
        frames=torch.stack([frames[t] for t in times], dim=1) if keep_frames else None,
    )


def covariant_lyapunov_vectors(
    step: StepFn | None,
    z0: Tensor,
    *,
    k: int,
    n_forward: int,
    n_backward: int,
    generator: torch.Generator | None = None,
    push: PushFn | None = None,
    tangents: Tensor | None = None,
) -> Tensor:
    """The first k covariant Lyapunov vectors at the state reached after `n_forward` steps from z0.

    Args:
        step, z0 (B, *S), k, generator, push, tangents: as in `clv_along_orbit`.
        n_forward: steps from z0 to the state where the CLVs are wanted (>= 0; the forward
            transient that aligns the Gram-Schmidt frame).
        n_backward: further steps whose Jacobians the backward iteration runs through (>= 1).
    Returns:
        (B, k, *S) unit vectors, v[:, j] = CLV j+1, ordered like the exponents (descending);
        (B, k, d) for a flat state of dimension d. Defined up to sign.
    Raises:
        ConfigError / ValueError as `clv_along_orbit`.
    """
    result = clv_along_orbit(step, z0, k=k, times=(n_forward,), n_backward=n_backward, push=push, generator=generator, tangents=tangents,
                             keep_frames=True)
    return result.vectors()[:, 0]


def gram_schmidt_vectors(step: StepFn | None, z0: Tensor, *, k: int, n_forward: int, generator: torch.Generator | None = None,
                         push: PushFn | None = None) -> Tensor:
    """(B, k, *S) the Gram-Schmidt (backward Lyapunov) frame after n_forward steps, with the same
    generator draws as `covariant_lyapunov_vectors`: the vectors the CLVs differ from on a
    non-normal map."""
    result = clv_along_orbit(step, z0, k=k, times=(n_forward,), n_backward=1, push=push, generator=generator, keep_frames=True)
    assert result.frames is not None
    return result.frames[:, 0]
