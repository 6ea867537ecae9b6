"""TRM: one shared 2-layer net f applied to both states.

Per segment: H_cycles x (L_cycles x [z_L <- f(z_L, z_H + x)], z_H <- f(z_H, z_L)); gradient flows
through the last full cycle only (L_cycles + 1 applications), the earlier cycles just improve the
starting point (official `TinyRecursiveReasoningModel_ACTV1`, Jolicoeur-Martineau 2025).
"""
from __future__ import annotations

from model_core.core import RecurrentCore, UpdateKind
from model_core.layers import ReasoningBlock, ReasoningModule
from trm.config import TRMConfig


class TRMCore(RecurrentCore):
    config: TRMConfig

    def __init__(self, config: TRMConfig):
        super().__init__(config)
        c = config
        self.L_level = ReasoningModule(
            [ReasoningBlock(c.hidden_size, c.num_heads, c.expansion, c.rms_norm_eps, mlp_t=c.mlp_t, seq_total=c.seq_total) for _ in range(c.L_layers)]
        )
        self.grad_updates = c.L_cycles + 1

    def level(self, kind: UpdateKind) -> ReasoningModule:
        return self.L_level
