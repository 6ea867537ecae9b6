"""Architecture configuration shared by TRM and HRM.

`ArchConfig` holds what both models have; `trm.config.TRMConfig` and `hrm.config.HRMConfig`
subclass it with their own defaults (the official recipes). The last four fields are derived from
the dataset (and the per-rank batch) by `derive_from_data`, never typed by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
POS_ENCODINGS = ("rope", "learned", "none")
LOSS_TYPES = ("stablemax_cross_entropy", "softmax_cross_entropy")


@dataclass
class ArchConfig:
    """Fields common to the recursive reasoning models (official names kept for interop).

    z_H / z_L are the paper's y (answer state) / z (latent reasoning state) for TRM and the high /
    low level states for HRM. One ACT *segment* runs H_cycles x (L_cycles z_L-updates + 1 z_H-update).
    """

    name: str = "?"
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    H_cycles: int = 3
    L_cycles: int = 6
    L_layers: int = 2
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    puzzle_emb_ndim: int = 512
    pos_encodings: str = "rope"
    forward_dtype: str = "bfloat16"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    loss_type: str = "stablemax_cross_entropy"
    no_ACT_continue: bool = True
    vocab_size: int = 0
    seq_len: int = 0
    num_puzzle_identifiers: int = 1
    batch_size: int = 1

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.forward_dtype]

    @property
    def puzzle_emb_positions(self) -> int:
        """P, the number of prefix positions holding the puzzle embedding (HRM rule; TRM overrides)."""
        return -(-self.puzzle_emb_ndim // self.hidden_size) if self.puzzle_emb_ndim > 0 else 0

    @property
    def seq_total(self) -> int:
        """S = P + L, the length of the latent state."""
        return self.seq_len + self.puzzle_emb_positions

    def validate(self, derived: bool = True) -> None:
        """Raise ConfigError on values no model can be built from; `derived=False` skips the
        dataset-derived fields (checked at start-up, before the data exists)."""
        if self.forward_dtype not in DTYPES:
            raise ConfigError(f"arch.forward_dtype={self.forward_dtype!r} is not one of {sorted(DTYPES)}")
        if self.pos_encodings not in POS_ENCODINGS:
            raise ConfigError(f"arch.pos_encodings={self.pos_encodings!r} is not one of {list(POS_ENCODINGS)}")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"arch.loss_type={self.loss_type!r} is not one of {list(LOSS_TYPES)}")
        for key in ("hidden_size", "num_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"arch.{key}={getattr(self, key)} must be >= 1")
        if not self.expansion > 0:
            raise ConfigError(f"arch.expansion={self.expansion} must be > 0")
        if self.puzzle_emb_ndim < 0:
            raise ConfigError(f"arch.puzzle_emb_ndim={self.puzzle_emb_ndim} must be >= 0")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ConfigError(f"arch.halt_exploration_prob={self.halt_exploration_prob} must be in [0, 1]")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"arch.hidden_size={self.hidden_size} is not divisible by arch.num_heads={self.num_heads}")
        keys = ("H_cycles", "L_cycles", "L_layers", "halt_max_steps")
        if derived:
            keys += ("vocab_size", "seq_len", "num_puzzle_identifiers", "batch_size")
        for key in keys:
            if getattr(self, key) < 1:
                raise ConfigError(f"arch.{key}={getattr(self, key)} must be >= 1")

    def derive_from_data(self, *, vocab_size: int, seq_len: int, num_puzzle_identifiers: int, batch_size: int) -> None:
        """Fill the dataset-derived fields (in place) and validate."""
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.num_puzzle_identifiers, self.batch_size = num_puzzle_identifiers, batch_size
        self.validate()

