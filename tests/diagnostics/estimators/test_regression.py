"""Pinned outputs of the estimator on fixed inputs (regression, not correctness).

A change here means the numbers the pipeline publishes changed: the tangent draw, the QR
convention, the clipping or the averaging. Correctness is asserted in test_lyapunov.py. Inputs
are short (20-50 steps) or non-chaotic, so rounding differences between platforms stay far below
the 1e-10 tolerance; values were produced by torch 2.13 on CPU in float64.
"""
from __future__ import annotations

import torch

from diagnostics.estimators import systems
from diagnostics.estimators.lyapunov import lyapunov_log_r, lyapunov_spectrum, seed_method_lambda1

F64 = torch.float64
HENON_Z0 = torch.tensor([[0.1, 0.0], [0.0, 0.1], [-0.05, 0.05]], dtype=F64)

HENON_SPECTRUM_T20 = [
    [0.3691780108293422, -1.573150815155278],
    [0.37364018145609207, -1.5776129857820282],
    [0.1773100064433935, -1.3812828107693296],
]
MLP_SPECTRUM_T50_K3_TONS2 = [
    [-0.08728627992602672, -0.3745188901487687, -1.281411090160402],
    [-0.3087128446383084, -1.4050569336192624, -1.5314488150012804],
]
HENON_SEED_METHOD_T20 = [0.3691780108293422, 0.33736928828786295, 0.199865563616947]


def test_pinned_henon_spectrum():
    lam = lyapunov_spectrum(systems.henon().step, HENON_Z0, n_steps=20, k=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lam, torch.tensor(HENON_SPECTRUM_T20, dtype=F64), atol=1e-10, rtol=0)


def test_pinned_mlp_spectrum_with_t_ons():
    z0 = torch.linspace(-1, 1, 12, dtype=F64).reshape(2, 6)
    result = lyapunov_log_r(systems.mlp_map().step, z0, n_steps=50, k=3, t_ons=2, generator=torch.Generator().manual_seed(0))
    assert result.log_r.shape == (2, 25, 3)
    assert torch.allclose(result.exponents(), torch.tensor(MLP_SPECTRUM_T50_K3_TONS2, dtype=F64), atol=1e-10, rtol=0)


def test_pinned_seed_method():
    lam1 = seed_method_lambda1(systems.henon().step, HENON_Z0, 20, torch.Generator().manual_seed(0))
    assert torch.allclose(lam1, torch.tensor(HENON_SEED_METHOD_T20, dtype=F64), atol=1e-10, rtol=0)
