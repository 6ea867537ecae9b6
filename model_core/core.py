"""The recurrent core both models share: embeddings, heads, latent carry and the update schedule.

TRM and HRM differ only in which module performs a z_L- or z_H-update and in how many of the last
updates of a segment carry gradient:

    one segment = H_cycles x ( L_cycles x [z_L <- f_L(z_L, z_H + x)],  z_H <- f_H(z_H, z_L) )

TRM uses one shared net (f_L = f_H = L_level) and back-propagates through the last full cycle
(L_cycles + 1 updates); HRM has separate H_level and L_level and back-propagates through the last
L- and H-update only ("one-step gradient"). Subclasses provide `level(kind)` and `grad_updates`.
Diagnostics drive the same schedule one sub-update at a time through `sub_updates` and `apply`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from model_core.config import ArchConfig
from model_core.init import trunc_normal_init_
from model_core.layers import CastedEmbedding, CastedLinear, CosSin, ReasoningModule, RotaryEmbedding
from model_core.sparse_embedding import CastedSparseEmbedding

UpdateKind = Literal["L", "H"]
Batch = dict[str, torch.Tensor]


@dataclass
class LatentCarry:
    """The recurrent state: z_H and z_L, each (B, S, D) in the forward dtype."""

    z_H: torch.Tensor
    z_L: torch.Tensor


@dataclass
class CoreOutput:
    """One segment's read-out: logits (B, L, V) in the forward dtype, q logits (B,) float32."""

    logits: torch.Tensor
    q_halt_logits: torch.Tensor
    q_continue_logits: torch.Tensor


class RecurrentCore(nn.Module):
    """Shared inner model (official `..._Inner`); attribute names match the official state dict."""

    config: ArchConfig

    def __init__(self, config: ArchConfig):
        super().__init__()
        config.validate()
        self.config = config
        dtype = config.dtype
        D = config.hidden_size
        self.embed_scale = math.sqrt(D)
        self.embed_tokens = CastedEmbedding(config.vocab_size, D, init_std=1.0 / math.sqrt(D), cast_to=dtype)
        self.lm_head = CastedLinear(D, config.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        self.puzzle_emb_len = config.puzzle_emb_positions  # P
        if config.puzzle_emb_ndim > 0:
            # init 0: every puzzle starts from the same (empty) prefix.
            self.puzzle_emb = CastedSparseEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim, config.batch_size, init_std=0.0, cast_to=dtype)
        S = config.seq_len + self.puzzle_emb_len
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(D // config.num_heads, S, config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(S, D, init_std=1.0 / math.sqrt(D), cast_to=dtype)
        self.H_init = nn.Buffer(trunc_normal_init_(torch.empty(D), std=1.0).to(dtype), persistent=True)
        self.L_init = nn.Buffer(trunc_normal_init_(torch.empty(D), std=1.0).to(dtype), persistent=True)
        with torch.no_grad():
            # Start by predicting "continue" (sigmoid(-5) ~ 0.007) so early training does not halt.
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    # --- structure provided by the model packages -------------------------------------------
    grad_updates: int  # how many trailing sub-updates of a segment back-propagate

    def level(self, kind: UpdateKind) -> ReasoningModule:
        raise NotImplementedError

    # --- schedule ------------------------------------------------------------------------------
    def sub_updates(self) -> list[UpdateKind]:
        """The ordered sub-updates of one segment, e.g. TRM Sudoku: (6 x L, H) x 3 = 21 entries."""
        return (["L"] * self.config.L_cycles + ["H"]) * self.config.H_cycles

    def cos_sin(self) -> CosSin | None:
        return self.rotary_emb() if hasattr(self, "rotary_emb") else None

    def apply(self, kind: UpdateKind, carry: LatentCarry, x: torch.Tensor, cos_sin: CosSin | None) -> LatentCarry:
        """One sub-update of the joint state; x is the input embedding (B, S, D), held fixed."""
        if kind == "L":
            return LatentCarry(carry.z_H, self.level("L")(carry.z_L, carry.z_H + x, cos_sin))
        return LatentCarry(self.level("H")(carry.z_H, carry.z_L, cos_sin), carry.z_L)

    # --- input and output --------------------------------------------------------------------
    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) int and puzzle ids (B,) -> scaled embeddings (B, S, D) in the forward dtype.

        The puzzle vector is zero-padded to P*D and placed in front of the tokens, so with
        ndim = D only prefix position 0 is learned; the prefix is scaled by sqrt(D) like the rest.
        """
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            puzzle = self.puzzle_emb(puzzle_identifiers)
            pad = self.puzzle_emb_len * self.config.hidden_size - puzzle.shape[-1]
            if pad > 0:
                puzzle = F.pad(puzzle, (0, pad))
            embedding = torch.cat((puzzle.view(-1, self.puzzle_emb_len, self.config.hidden_size), embedding), dim=-2)
        if self.config.pos_encodings == "learned":
            # 1/sqrt(2) keeps the variance of the sum of two unit-variance terms.
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(embedding.dtype))
        return self.embed_scale * embedding

    def read_out(self, z_H: torch.Tensor) -> CoreOutput:
        """Logits of the answer positions (prefix dropped) and the halting head on position 0."""
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]
        q = self.q_head(z_H[:, 0]).to(torch.float32)
        return CoreOutput(logits, q[..., 0], q[..., 1])

    # --- carry -----------------------------------------------------------------------------------
    def empty_carry(self, batch_size: int, device: torch.device | None = None) -> LatentCarry:
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        device = device or self.H_init.device
        return LatentCarry(torch.empty(shape, dtype=self.config.dtype, device=device), torch.empty(shape, dtype=self.config.dtype, device=device))

    def reset_carry(self, reset: torch.Tensor, carry: LatentCarry) -> LatentCarry:
        """Rows where `reset` (B,) bool is set restart from H_init / L_init."""
        flag = reset.view(-1, 1, 1)
        return LatentCarry(torch.where(flag, self.H_init, carry.z_H), torch.where(flag, self.L_init, carry.z_L))

    def initial_carry(self, batch_size: int, device: torch.device | None = None) -> LatentCarry:
        """A carry with every row at (H_init, L_init)."""
        carry = self.empty_carry(batch_size, device)
        return self.reset_carry(torch.ones(batch_size, dtype=torch.bool, device=carry.z_H.device), carry)

    # --- one segment -----------------------------------------------------------------------------
    def forward(self, carry: LatentCarry, batch: Batch) -> tuple[LatentCarry, CoreOutput]:
        """Run one ACT segment. Only the last `grad_updates` sub-updates build a graph; the new
        carry is detached so no gradient flows between segments (deep supervision)."""
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        schedule = self.sub_updates()
        n_free = len(schedule) - self.grad_updates
        with torch.no_grad():
            for kind in schedule[:n_free]:
                carry = self.apply(kind, carry, x, cos_sin)
        for kind in schedule[n_free:]:
            carry = self.apply(kind, carry, x, cos_sin)
        return LatentCarry(carry.z_H.detach(), carry.z_L.detach()), self.read_out(carry.z_H)
