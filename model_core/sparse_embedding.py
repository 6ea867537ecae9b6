"""The sparse puzzle embedding: a per-puzzle vector table trained by SignSGD, outside autograd.

The table `weights` (num_ids, D) is a persistent fp32 *buffer*, not a parameter, so AdamATan2 never
sees it and `num_params` excludes it (as in the official runs). In training mode the rows of the
batch are copied into `local_weights` (B, D), a non-persistent buffer with requires_grad, which
collects the gradient; `training.optim.SparseEmbeddingSignSGD` applies it to the touched
rows. With one identifier (Sudoku, Maze) this is a single learned vector.
"""
from __future__ import annotations

import torch
from torch import nn

from model_core.init import trunc_normal_init_
from runtime.errors import ConfigError


class CastedSparseEmbedding(nn.Module):
    """Table (num_embeddings, embedding_dim) fp32; lookups return `cast_to` of shape (B, D)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.weights = nn.Buffer(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std), persistent=True)
        self.local_weights = nn.Buffer(torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False)
        self.local_ids = nn.Buffer(torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids (B,) -> (B, D)
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        if ids.shape[0] != self.local_ids.shape[0]:
            raise ConfigError(
                f"training batch has {ids.shape[0]} rows per rank but the puzzle embedding was built for "
                f"{self.local_ids.shape[0]}; set the per-rank batch size consistently"
            )
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)
