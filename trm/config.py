"""TRM configuration; defaults are the official `arch/trm.yaml` (Sudoku recipe cycles)."""
from __future__ import annotations

from dataclasses import dataclass

from model_core.config import ArchConfig


@dataclass
class TRMConfig(ArchConfig):
    """Tiny Recursive Model. z_H is the paper's y (current answer), z_L its z (latent reasoning).

    `mlp_t=True` replaces attention by a token-mixing MLP (TRM-MLP; fixes the sequence length).
    `puzzle_emb_len` is P, the number of prefix positions (16 officially); 0 means ceil(ndim / D).
    `no_ACT_continue=True` halts on q_halt > 0 and trains no continue head.
    """

    name: str = "trm"
    H_cycles: int = 3
    L_cycles: int = 6
    L_layers: int = 2
    mlp_t: bool = False
    puzzle_emb_len: int = 16
    no_ACT_continue: bool = True

    @property
    def puzzle_emb_positions(self) -> int:
        # Without a puzzle embedding there is no prefix (the official code would still reserve 16
        # positions and fail on a shape mismatch).
        if self.puzzle_emb_ndim <= 0:
            return 0
        return self.puzzle_emb_len if self.puzzle_emb_len > 0 else super().puzzle_emb_positions
