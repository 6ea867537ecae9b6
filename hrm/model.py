"""HRM: separate high- and low-level modules with the one-step gradient approximation.

Per segment: H_cycles x (L_cycles x [z_L <- L_level(z_L, z_H + x)], z_H <- H_level(z_H, z_L));
only the final L- and H-update carry gradient (official `HierarchicalReasoningModel_ACTV1`,
Wang et al. 2025). With H_cycles = L_cycles = 2: L L H L (no grad) then L H (grad).
"""
from __future__ import annotations

from hrm.config import HRMConfig
from model_core.core import RecurrentCore, UpdateKind
from model_core.layers import ReasoningBlock, ReasoningModule


class HRMCore(RecurrentCore):
    config: HRMConfig

    def __init__(self, config: HRMConfig):
        super().__init__(config)
        c = config

        def stack(n: int) -> ReasoningModule:
            return ReasoningModule([ReasoningBlock(c.hidden_size, c.num_heads, c.expansion, c.rms_norm_eps) for _ in range(n)])

        self.H_level = stack(c.H_layers)
        self.L_level = stack(c.L_layers)
        self.grad_updates = 2

    def level(self, kind: UpdateKind) -> ReasoningModule:
        return self.H_level if kind == "H" else self.L_level
