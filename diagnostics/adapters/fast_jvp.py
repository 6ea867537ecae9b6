"""Hand-written forward-mode derivatives (JVPs) of the reasoning blocks, for k tangents at once.

A sub-update applies a `ReasoningModule` to (state + injection). Pushing k tangent vectors through
it with generic forward-mode AD (`torch.func.jvp`, under `vmap` for k > 1) re-traces every op and
keeps per-op dual tensors; here each block is differentiated in closed form instead:

  - linear layers are linear: the k tangents (B, k, S, D) go through ONE matmul with the (cast)
    weight, stacked along the row axis, and their bias is dropped;
  - SwiGLU  a = silu(g) * u:   da = [silu'(g) * u] dg + silu(g) du, with
    silu'(g) = s (1 + g (1 - s)), s = sigmoid(g); the bracketed factors are computed once from the
    primal and shared by all tangents;
  - weightless RMSNorm  n = r * rho, rho = (mean(r^2) + eps)^(-1/2):
    dn = rho * (dr - n * mean(n * dr)), the mean over the normalised axis (the sequence axis for the
    mlp_t token mixer, whose tensor is still transposed there);
  - RoPE is linear in q and k: the tangents are rotated with the same tables;
  - softmax attention  P = softmax(q k^T / sqrt(hd)), o = P v:
    dS = (dq k^T + q dk^T) / sqrt(hd), dP = P * (dS - rowsum(P * dS)), do = dP v + P dv,
    with the two products of each sum fused into one matmul over a doubled contraction axis.

The primal goes through exactly the operations the modules themselves run (same functions, same
shapes and layouts), so the state trajectory is bit-for-bit the plain rollout's; only the tangents
use the stacked layout (tests check the identity).

Cost per segment relative to a plain rollout (benchmarks/bench_ftle_model.py; TRM-MLP Sudoku
shapes, float32, 2 CPU threads, `step_map.keep_freed_memory()`): batch 32: k = 1 2.5x (the
notebook's double-backward method 3.8x), k = 8 10.7x; batch 8: k = 1 1.75x (2.9x), k = 8 8.6x,
where `torch.func.jvp` takes 3.7x (k = 1) and 12.6x (k = 8 under vmap). Each tangent costs one
primal's matmul FLOPs plus two or three elementwise passes per nonlinearity.

All functions take the primal h (B, S, D) and tangents dh (B, k, S, D) in the same float dtype and
return (primal output, tangent outputs) of the same shapes. Verified against `torch.func.jvp` in
tests/diagnostics/adapters/test_fast_jvp.py (mlp_t and attention blocks, TRM and HRM, float64).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from diagnostics.estimators.lyapunov import push_tangents
from model_core.layers import Attention, CosSin, ReasoningBlock, ReasoningModule, SwiGLU, apply_rotary_pos_emb, math_sdpa, rms_norm


def _weight(linear: torch.nn.Module, dtype: torch.dtype) -> Tensor:
    """The layer's weight as the module would use it (cast to the input dtype; no-op when equal)."""
    return linear.weight.to(dtype)


def linear_jvp(layer: torch.nn.Module, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
    """CastedLinear: primal through the module, tangents (..., in) through one bias-free matmul."""
    return layer(x), F.linear(dx, _weight(layer, dx.dtype))


def swiglu_jvp(mlp: SwiGLU, x: Tensor, dx: Tensor) -> tuple[Tensor, Tensor]:
    """SwiGLU on x (B, ..., F) and tangents dx (B, k, ..., F); see the module doc for the rule."""
    gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)  # primal, as SwiGLU.forward computes it
    act = F.silu(gate)
    out = mlp.down_proj(act * up)
    # silu'(g) * u in one fused pass (the autograd kernel of silu), shared by all tangents.
    d_gate_factor = torch.ops.aten.silu_backward(up, gate).unsqueeze(1)
    d_gate, d_up = F.linear(dx, _weight(mlp.gate_up_proj, dx.dtype)).chunk(2, dim=-1)
    # Two passes over the (B, k, ..., inter) tangents, the second in place (elementwise passes
    # over k tangents cost as much as a sizeable share of the matmuls on a CPU).
    d_act = d_gate * d_gate_factor
    d_act.addcmul_(d_up, act.unsqueeze(1))
    return out, F.linear(d_act, _weight(mlp.down_proj, dx.dtype))


def rms_norm_jvp(r: Tensor, dr: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Weightless RMSNorm over the last axis of r (B, ..., F) and tangents dr (B, k, ..., F)."""
    n = rms_norm(r, eps)
    rho = torch.rsqrt(r.square().mean(-1, keepdim=True) + eps)  # (B, ..., 1)
    proj = (n.unsqueeze(1) * dr).mean(-1, keepdim=True)  # (B, k, ..., 1)
    dn = dr * rho.unsqueeze(1)
    return n, dn.addcmul_(proj, (n * rho).unsqueeze(1), value=-1.0)  # rho dr - (rho n) proj


def attention_jvp(attn: Attention, h: Tensor, dh: Tensor, cos_sin: CosSin | None) -> tuple[Tensor, Tensor]:
    """Attention on h (B, S, D) and tangents dh (B, k, S, D)."""
    B, S, _ = h.shape
    k_tan = dh.shape[1]
    H, Hkv, hd = attn.num_heads, attn.num_key_value_heads, attn.head_dim
    if Hkv != H:
        raise NotImplementedError("grouped-query attention has no manual JVP; use jvp_impl='func'")

    def split(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return t[:, :, :H], t[:, :, H : H + Hkv], t[:, :, H + Hkv :]

    # Primal: the same calls, shapes and layouts as Attention.forward, so the output is identical.
    q, k, v = split(attn.qkv_proj(h).view(B, S, H + 2 * Hkv, hd))
    dq, dk, dv = split(F.linear(dh, _weight(attn.qkv_proj, dh.dtype)).view(B * k_tan, S, H + 2 * Hkv, hd))
    if cos_sin is not None:
        q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        dq, dk = apply_rotary_pos_emb(dq, dk, *cos_sin)  # linear in (q, k)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, hd)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=False)
    out = attn.o_proj(o.transpose(1, 2).reshape(B, S, H * hd))
    # Tangents: (B, 1, H, S, hd) primal against (B, k, H, S, hd) tangents.
    q, k, v = (t.unsqueeze(1) for t in (q, k, v))
    dq, dk, dv = (t.view(B, k_tan, S, H, hd).transpose(2, 3) for t in (dq, dk, dv))
    scale = 1.0 / math.sqrt(hd)
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)  # (B, 1, H, S, S)
    # dS = (dq k^T + q dk^T) * scale as one matmul over a doubled head axis.
    d_scores = torch.matmul(torch.cat((dq, q.expand_as(dq)), -1), torch.cat((k.expand_as(dk), dk), -1).transpose(-1, -2)) * scale
    pd = probs * d_scores
    d_probs = pd - probs * pd.sum(-1, keepdim=True)
    # do = dP v + P dv as one matmul over a doubled key axis.
    d_out = torch.matmul(torch.cat((d_probs, probs.expand_as(d_probs)), -1), torch.cat((v.expand_as(dv), dv), -2))
    d_out = d_out.transpose(2, 3).reshape(B, k_tan, S, H * hd)
    return out, F.linear(d_out, _weight(attn.o_proj, dh.dtype))


def block_jvp(block: ReasoningBlock, h: Tensor, dh: Tensor, cos_sin: CosSin | None) -> tuple[Tensor, Tensor]:
    """One post-norm block (token mixing, then channel SwiGLU) on h (B, S, D), dh (B, k, S, D)."""
    eps = block.norm_eps
    if block.mlp_t_enabled:
        ht, dht = h.transpose(1, 2), dh.transpose(2, 3)  # (B, D, S): mix across positions
        mixed, d_mixed = swiglu_jvp(block.mlp_t, ht, dht)
        ht, dht = rms_norm_jvp(ht + mixed, d_mixed.add_(dht), eps)  # norm over the sequence axis
        # Tangents back to (B, k, S, D) memory order: a strided input would turn the channel
        # SwiGLU's matmul into a much slower batched one.
        h, dh = ht.transpose(1, 2), dht.transpose(2, 3).contiguous()
    else:
        mixed, d_mixed = attention_jvp(block.self_attn, h, dh, cos_sin)
        h, dh = rms_norm_jvp(h + mixed, d_mixed.add_(dh), eps)
    mixed, d_mixed = swiglu_jvp(block.mlp, h, dh)
    return rms_norm_jvp(h + mixed, d_mixed.add_(dh), eps)  # d_mixed is a fresh tensor


def module_jvp(module: ReasoningModule, hidden: Tensor, injection: Tensor, d_input: Tensor, cos_sin: CosSin | None) -> tuple[Tensor, Tensor]:
    """ReasoningModule(hidden, injection) and its JVP.

    Args:
        module: the level applied by the sub-update.
        hidden, injection: (B, S, D) primal inputs; the module runs on hidden + injection.
        d_input: (B, k, S, D) tangent of (hidden + injection), i.e. d_hidden + d_injection.
        cos_sin: RoPE tables or None.
    Returns:
        (output (B, S, D), tangent outputs (B, k, S, D)).
    """
    h = hidden + injection  # the same add ReasoningModule.forward does
    dh = d_input
    for layer in module.layers:
        h, dh = layer_jvp(layer, h, dh, cos_sin)
    return h, dh


def layer_jvp(layer: torch.nn.Module, h: Tensor, dh: Tensor, cos_sin: CosSin | None) -> tuple[Tensor, Tensor]:
    """A `ReasoningBlock` by its closed form; any other layer `layer(h, cos_sin)` (a test double,
    a future block type) by generic `torch.func.jvp`, so the manual path never silently
    mis-differentiates an unknown layer."""
    if type(layer) is ReasoningBlock:
        return block_jvp(layer, h, dh, cos_sin)
    with math_sdpa():
        return push_tangents(partial(layer, cos_sin=cos_sin), h, dh)
