"""HRM configuration; defaults are the official `arch/hrm_v1.yaml`."""
from __future__ import annotations

from dataclasses import dataclass

from model_core.config import ArchConfig


@dataclass
class HRMConfig(ArchConfig):
    """Hierarchical Reasoning Model: a slow high-level module (z_H, `H_level`, H_layers blocks)
    and a fast low-level one (z_L, `L_level`, L_layers blocks). Halting compares q_halt with
    q_continue, whose target is bootstrapped (`no_ACT_continue=False`)."""

    name: str = "hrm"
    H_cycles: int = 2
    L_cycles: int = 2
    H_layers: int = 4
    L_layers: int = 4
    no_ACT_continue: bool = False
