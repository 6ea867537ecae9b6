"""Closed-form block JVPs (diagnostics.adapters.fast_jvp) against generic forward-mode AD.

Test hypothesis: each hand-written derivative equals `torch.func.jvp` of the module's own forward.
In float64 the two differ only by summation order, so the tolerance is 1e-10 relative to the
tangent's scale (observed ~1e-15). The primal must be the module's output bit for bit (same ops).
"""
from __future__ import annotations

import pytest
import torch

from diagnostics.adapters.fast_jvp import block_jvp, layer_jvp, module_jvp, rms_norm_jvp, swiglu_jvp
from diagnostics.estimators.lyapunov import push_tangents
from hrm.config import HRMConfig
from model_core.layers import SwiGLU, math_sdpa, rms_norm
from model_core.registry import build_model
from trm.config import TRMConfig

RTOL = 1e-10


def tiny_core(kind: str, dtype: str = "float64", seq_len: int = 5, hidden: int = 16):
    """A small random core: 'mlp_t' (TRM-MLP), 'att' (TRM, RoPE), 'learned' (TRM, no RoPE), 'hrm'."""
    common = dict(hidden_size=hidden, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=2, L_layers=2, puzzle_emb_ndim=hidden, forward_dtype=dtype)
    if kind == "hrm":
        cfg = HRMConfig(H_layers=2, pos_encodings="rope", **common)
    else:
        cfg = TRMConfig(mlp_t=kind == "mlp_t", pos_encodings={"mlp_t": "none", "att": "rope", "learned": "learned"}[kind], puzzle_emb_len=2, **common)
    cfg.derive_from_data(vocab_size=11, seq_len=seq_len, num_puzzle_identifiers=1, batch_size=3)
    torch.manual_seed(0)
    core = build_model(cfg).model.inner.eval().requires_grad_(False)
    return core


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= rtol * max(scale, 1.0)


def reference(fn, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.func.jvp with the k tangents (B, k, ...) under vmap, math SDPA."""
    with torch.no_grad(), math_sdpa():
        return push_tangents(fn, x, dx)


def test_rms_norm_jvp_matches_func_jvp():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    dr = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)
    n, dn = rms_norm_jvp(r, dr, 1e-5)
    n_ref, dn_ref = reference(lambda x: rms_norm(x, 1e-5), r, dr)
    assert torch.equal(n, rms_norm(r, 1e-5))
    assert_close_rel(dn, dn_ref)


def test_swiglu_jvp_matches_func_jvp():
    torch.manual_seed(2)
    mlp = SwiGLU(12, 2.0).double().requires_grad_(False)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    dx = torch.randn(3, 4, 5, 12, dtype=torch.float64)
    out, d_out = swiglu_jvp(mlp, x, dx)
    out_ref, d_ref = reference(mlp, x, dx)
    assert torch.equal(out, mlp(x))
    assert_close_rel(d_out, d_ref)


@pytest.mark.parametrize("kind", ["mlp_t", "att", "learned", "hrm"])
@pytest.mark.parametrize("k", [1, 3])
def test_block_jvp_matches_func_jvp_float64(kind, k):
    """Every block type (mlp_t token mixer, RoPE attention, attention without RoPE, HRM levels)."""
    core = tiny_core(kind)
    cos_sin = core.cos_sin()
    S, D = core.config.seq_total, core.config.hidden_size
    g = torch.Generator().manual_seed(3)
    h = 2 * torch.randn(3, S, D, generator=g, dtype=torch.float64)
    dh = torch.randn(3, k, S, D, generator=g, dtype=torch.float64)
    for kind_ in ("L", "H"):
        block = core.level(kind_).layers[0]
        out, d_out = block_jvp(block, h, dh, cos_sin)
        out_ref, d_ref = reference(lambda x: block(x, cos_sin), h, dh)
        assert torch.equal(out, block(h, cos_sin))
        assert_close_rel(d_out, d_ref)


@pytest.mark.parametrize("kind", ["mlp_t", "att", "hrm"])
def test_module_jvp_primal_is_bit_identical_in_float32(kind):
    """The primal runs the module's own operations, so the trajectory equals the plain rollout."""
    core = tiny_core(kind, dtype="float32")
    cos_sin = core.cos_sin()
    S, D = core.config.seq_total, core.config.hidden_size
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 3, S, D, generator=g)
    for kind_ in ("L", "H"):
        level = core.level(kind_)
        out, d_out = module_jvp(level, a, b, torch.randn(3, 2, S, D, generator=g), cos_sin)
        assert torch.equal(out, level(a, b, cos_sin))
        assert d_out.shape == (3, 2, S, D) and d_out.dtype == torch.float32


def test_module_jvp_tangent_of_the_sum_matches_func_jvp():
    """module(hidden, injection) differentiated in both arguments: the tangent of the sum enters."""
    core = tiny_core("att")
    level, cos_sin = core.L_level, core.cos_sin()
    S, D = core.config.seq_total, core.config.hidden_size
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 3, S, D, generator=g, dtype=torch.float64)
    da, db = torch.randn(2, 3, 2, S, D, generator=g, dtype=torch.float64)
    _, d_out = module_jvp(level, a, b, da + db, cos_sin)
    with torch.no_grad(), math_sdpa():
        ref = torch.stack([torch.func.jvp(lambda x, y: level(x, y, cos_sin), (a, b), (da[:, i], db[:, i]))[1] for i in range(2)], 1)
    assert_close_rel(d_out, ref)


def test_unknown_layer_falls_back_to_func_jvp():
    """A layer without a closed form (here a fixed tanh map) is differentiated generically."""

    class TanhLayer(torch.nn.Module):
        def forward(self, h, cos_sin):
            return torch.tanh(2 * h)

    g = torch.Generator().manual_seed(6)
    h = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    dh = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    out, d_out = layer_jvp(TanhLayer(), h, dh, None)
    assert torch.equal(out, torch.tanh(2 * h))
    assert_close_rel(d_out, 2 * (1 - torch.tanh(2 * h).square()).unsqueeze(1) * dh)
