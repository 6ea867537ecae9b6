"""Weight initialisation shared by TRM and HRM.

The official code initialises every weight with a JAX/flax-style truncated normal: samples are cut
at +-2 standard deviations *and* rescaled so the realised standard deviation equals the requested
one (torch's `trunc_normal_` cuts without rescaling, which would shrink the std by ~12%).
"""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Fill `tensor` in place with a truncated normal whose realised std is `std`.

    Inverse-CDF sampling: u ~ U(erf(l/sqrt2), erf(u/sqrt2)), x = sqrt2 * erfinv(u), then scale by
    the factor c that corrects for the truncation's variance loss (c ~ 1.1369 * std for +-2) and
    clip to [l*c, u*c]. `std == 0` gives zeros.
    """
    if std == 0:
        return tensor.zero_()
    sqrt2 = math.sqrt(2.0)
    a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
    z = (b - a) / 2.0
    pdf_l = math.exp(-0.5 * lower * lower) / math.sqrt(2 * math.pi)
    pdf_u = math.exp(-0.5 * upper * upper) / math.sqrt(2 * math.pi)
    variance = 1.0 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2
    comp_std = std / math.sqrt(variance)
    tensor.uniform_(a, b)
    tensor.erfinv_()
    tensor.mul_(sqrt2 * comp_std)
    tensor.clip_(lower * comp_std, upper * comp_std)
    return tensor
