"""Kaplan-Yorke (Lyapunov) dimension and finite-time local growth rates, from Lyapunov data.

Kaplan-Yorke dimension (Kaplan & Yorke 1979; Frederickson, Kaplan, Yorke & Yorke 1983): with the
exponents sorted descending, lambda_1 >= ... >= lambda_k, and partial sums S_j = sum_{i<=j}
lambda_i, let j be the largest index with S_j >= 0. Then

    D_KY = j + S_j / |lambda_{j+1}|,

the dimension of the largest ball-like volume the dynamics does not shrink, interpolated linearly
between j and j + 1. It equals the information dimension of typical attractors (the Kaplan-Yorke
conjecture): Henon (1.4, 0.3) about 1 + 0.41922 / 1.62319 = 1.258, Lorenz about 2.06. The
partial sums of a descending sequence are concave in j, so {j : S_j >= 0} is always a prefix.
Conventions at the ends:
  - lambda_1 < 0 (every direction contracts, e.g. a stable fixed point): D_KY = 0.
  - S_k >= 0 for all k exponents given: D_KY = k. With k smaller than the state dimension this is
    only a lower bound (the exponents that would bring the sum below zero were not computed); a
    caller estimating k < D exponents should report how often it happens.
Exponents are in any time unit (the ratio is unit-free); per step or per unit time give the same
D_KY. A finite-time spectrum gives a finite-time dimension with the exponents' statistical error:
dD/dlambda_i is 1/|lambda_{j+1}| for i <= j, so an error e in lambda_1 moves D_KY by ~e/|lambda_{j+1}|.

Local growth rates: the Benettin/QR method records, per step (or per block of steps, such as a
model's segment), the sums of log|R_ii| (`lyapunov.LyapunovResult.log_r`, the spectrum study's
`log_r_segment`). Over a window of w consecutive entries their sum divided by the steps in the
window is the finite-time ("local") exponent of each frame direction over that window
(Abarbanel, Brown & Kennel 1991). Their spread measures how unevenly the trajectory stretches;
their mean over non-overlapping windows covering the record is the global exponent exactly.
Columns stay in frame order (column i = the i-th Gram-Schmidt direction, the i-th exponent once
the frame is aligned); they are not sorted per window, so column 0 is the local rate of the
leading direction even where another direction grows faster over that window.

References:
  J. L. Kaplan, J. A. Yorke, in Functional Differential Equations and Approximation of Fixed
    Points, Lecture Notes in Mathematics 730, 204-227, Springer (1979).
  P. Frederickson, J. L. Kaplan, E. D. Yorke, J. A. Yorke, J. Differ. Equ. 49, 185-207 (1983).
  H. D. I. Abarbanel, R. Brown, M. B. Kennel, J. Nonlinear Sci. 1, 175-199 (1991).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from runtime.errors import ConfigError


def _kaplan_yorke_np(lam: np.ndarray) -> np.ndarray:
    """D_KY of (..., k) float64 exponents (any order), NaN where an exponent is NaN."""
    lam = -np.sort(-lam, axis=-1)  # descending; NaN sorts last and is caught below
    k = lam.shape[-1]
    partial = np.cumsum(lam, axis=-1)  # S_1 .. S_k
    j = (partial >= 0).sum(-1)  # a prefix by concavity
    inner = np.clip(j, 1, k - 1) if k > 1 else np.ones_like(j)  # a valid index for the interpolation
    s_j = np.take_along_axis(partial, (inner - 1)[..., None], -1)[..., 0]
    next_lam = np.take_along_axis(lam, np.minimum(inner, k - 1)[..., None], -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        interp = inner + s_j / np.abs(next_lam)
    dim = np.where(j == 0, 0.0, np.where(j == k, float(k), interp))
    return np.where(np.isnan(lam).any(-1), np.nan, dim)


def kaplan_yorke_dimension(exponents: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Kaplan-Yorke dimension of each spectrum (formula and conventions: module doc).

    Args:
        exponents: (..., k) Lyapunov exponents, k >= 1, usually sorted descending (they are
            sorted here anyway); numpy array or tensor, any float dtype and time unit.
    Returns:
        (...) float64 dimensions (numpy in, numpy out; a tensor in gives a float64 tensor on the
        same device): 0 when lambda_1 < 0; k when the sum of all k is >= 0 (then a lower bound of
        the dimension if the state has more than k); NaN where an exponent is NaN.
    Raises:
        ConfigError: an empty last axis.
    """
    if exponents.shape[-1] < 1:
        raise ConfigError("the Kaplan-Yorke dimension needs at least one exponent per spectrum")
    if isinstance(exponents, Tensor):
        dim = _kaplan_yorke_np(exponents.detach().to("cpu", torch.float64).numpy())
        return torch.from_numpy(np.asarray(dim, dtype=np.float64)).to(exponents.device)
    return np.asarray(_kaplan_yorke_np(np.asarray(exponents, dtype=np.float64)), dtype=np.float64)


def local_growth_rates(log_growth: np.ndarray | Tensor, window: int, *, steps_per_entry: int = 1, stride: int | None = None) -> np.ndarray | Tensor:
    """Finite-time local exponents over windows of a per-step (or per-block) log-growth record.

    Args:
        log_growth: (..., T, k) sums of log|R_ii| per entry (a step, or a block of
            `steps_per_entry` steps such as a segment), columns in frame order.
        window: entries per window (>= 1, <= T).
        steps_per_entry: steps each entry covers, so the rates come out per step.
        stride: entries between window starts; default `window` (non-overlapping windows; a last
            incomplete window is dropped).
    Returns:
        (..., n_windows, k) float64 local exponents per step, frame order (not sorted), window w
        covering entries [w * stride, w * stride + window); n_windows = (T - window) // stride + 1.
    Raises:
        ConfigError: window outside [1, T], stride < 1 or steps_per_entry < 1.
    """
    n_entries = log_growth.shape[-2]
    stride = window if stride is None else stride
    if not 1 <= window <= n_entries or stride < 1 or steps_per_entry < 1:
        raise ConfigError(f"local growth rates need 1 <= window ({window}) <= entries ({n_entries}), stride ({stride}) >= 1 and "
                          f"steps_per_entry ({steps_per_entry}) >= 1")
    as_tensor = isinstance(log_growth, Tensor)
    x = log_growth.detach().to("cpu", torch.float64).numpy() if as_tensor else np.asarray(log_growth, dtype=np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(x, window, axis=-2)[..., ::stride, :, :]  # (..., n_windows, k, window)
    rates = windows.sum(-1) / (window * steps_per_entry)
    return torch.from_numpy(rates).to(log_growth.device) if as_tensor else rates
