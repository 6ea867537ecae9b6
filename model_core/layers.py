"""Layers shared by TRM and HRM, matching the official modules name for name and shape for shape.

Parameters are float32 "master" weights; every layer casts them to the dtype of its input, so the
same module runs in float32 or bfloat16 (`forward_dtype`) and checkpoints stay float32.
Norms are weightless RMSNorm applied *after* each residual add (post-norm); the official models
have no norm parameters at all.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from model_core.init import trunc_normal_init_

CosSin = tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def math_sdpa() -> Iterator[None]:
    """Force the math SDPA backend: the fused kernels have no forward-mode (JVP) derivative."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm over the last axis, computed in (at least) float32, returned in x's dtype."""
    dtype = x.dtype
    x = x.to(torch.promote_types(dtype, torch.float32))
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x.to(dtype)


def swiglu_intermediate_size(hidden: int, expansion: float) -> int:
    """Official SwiGLU width: round(expansion * hidden * 2/3) rounded up to a multiple of 256."""
    inter = round(expansion * hidden * 2 / 3)
    return -(-inter // 256) * 256


class CastedLinear(nn.Module):
    """Linear layer with fp32 weight (out, in), LeCun truncated-normal init, cast to the input dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table `embedding_weight` (n, d) in fp32; lookups return `cast_to`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    """RoPE tables (S, head_dim) in fp32, half-split convention, as non-persistent buffers."""

    def __init__(self, dim: int, max_position_embeddings: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        t = torch.arange(max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_cached = nn.Buffer(emb.cos(), persistent=False)
        self.sin_cached = nn.Buffer(emb.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q, k of shape (B, S, H, hd) in (at least) fp32, returning the input dtype."""
    dtype = q.dtype
    compute = torch.promote_types(dtype, cos.dtype)  # fp32 for bf16/fp32 models, fp64 in diagnostics
    q, k = q.to(compute), k.to(compute)
    cos, sin = cos.to(compute).unsqueeze(-2), sin.to(compute).unsqueeze(-2)  # (S, 1, hd) broadcasts over heads
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q.to(dtype), k.to(dtype)


class Attention(nn.Module):
    """Non-causal multi-head attention with fused q|k|v projection and no mask (pads are attended).

    Goes through `F.scaled_dot_product_attention`, so any backend works; under forward-mode AD wrap
    the call in `math_sdpa()`.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_key_value_heads: int):
        super().__init__()
        self.head_dim, self.num_heads, self.num_key_value_heads = head_dim, num_heads, num_key_value_heads
        self.qkv_proj = CastedLinear(hidden_size, (num_heads + 2 * num_key_value_heads) * head_dim, bias=False)
        self.o_proj = CastedLinear(num_heads * head_dim, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        B, S, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(B, S, self.num_heads + 2 * self.num_key_value_heads, self.head_dim)
        q = qkv[:, :, : self.num_heads]
        k = qkv[:, :, self.num_heads : self.num_heads + self.num_key_value_heads]
        v = qkv[:, :, self.num_heads + self.num_key_value_heads :]
        if cos_sin is not None:
            q, k = apply_rotary_pos_emb(q, k, *cos_sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, hd)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=self.num_key_value_heads != self.num_heads)
        # reshape, not view: the math backend (needed for JVPs) returns a non-contiguous tensor.
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate) * up), gate and up from one fused projection (gate first)."""

    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = swiglu_intermediate_size(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class ReasoningBlock(nn.Module):
    """One post-norm transformer block: token mixing, then a channel SwiGLU, each residual + RMSNorm.

    Token mixing is attention (`self_attn`), or with `mlp_t=True` (TRM-MLP) a SwiGLU across the
    sequence axis (`mlp_t`, hidden = S = seq_len + P) whose residual norm is taken over the sequence
    axis, because the tensor is still transposed there. S is baked into the weights.
    """

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, rms_norm_eps: float, mlp_t: bool = False, seq_total: int = 0):
        super().__init__()
        self.norm_eps, self.mlp_t_enabled = rms_norm_eps, mlp_t
        if mlp_t:
            self.mlp_t = SwiGLU(seq_total, expansion)
        else:
            self.self_attn = Attention(hidden_size, hidden_size // num_heads, num_heads, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, hidden_states: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:  # (B, S, D)
        if self.mlp_t_enabled:
            h = hidden_states.transpose(1, 2)  # (B, D, S)
            h = rms_norm(h + self.mlp_t(h), self.norm_eps)
            hidden_states = h.transpose(1, 2)
        else:
            hidden_states = rms_norm(hidden_states + self.self_attn(hidden_states, cos_sin), self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class ReasoningModule(nn.Module):
    """A stack of blocks applied to (state + injection); the injection is added once, up front."""

    def __init__(self, layers: list[ReasoningBlock]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, injection: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        hidden_states = hidden_states + injection
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos_sin)
        return hidden_states
