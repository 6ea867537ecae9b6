"""Cross-entropies and the ACT loss head (official `ACTLossHead`), with the official metric set.

Deep supervision: the loss is taken at every segment on every row (halted or not); metrics count
only rows that halted this segment. Losses are sums over the batch; the trainer divides by the
global batch size before backward.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model_core.act import ACTCarry, ACTModel
from model_core.core import Batch

IGNORE_LABEL_ID = -100


def _stablemax_s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(s(x) / sum s(x)) with s(x) = x + 1 for x >= 0 and 1 / (1 - x) below: a softmax whose
    tails decay polynomially, which keeps gradients alive on confidently wrong cells."""
    s_x = _stablemax_s(x)
    return torch.log(s_x / s_x.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-position CE (B, L) in float64; ignored positions give 0."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0)
    picked = torch.gather(logprobs, index=safe.to(torch.long).unsqueeze(-1), dim=-1).squeeze(-1)
    return -torch.where(valid, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-position CE (B, L) in float32; ignored positions give 0."""
    # reshape, not view: the logits are a slice past the puzzle-embedding prefix (non-contiguous)
    flat = F.cross_entropy(logits.to(torch.float32).reshape(-1, logits.shape[-1]), labels.to(torch.long).reshape(-1), ignore_index=ignore_index, reduction="none")
    return flat.view(labels.shape)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


class ACTLossHead(nn.Module):
    """Wraps an `ACTModel` as `model` (so keys read `model.inner.*`) and computes loss + metrics.

    total = lm_loss + 0.5 * (q_halt_loss + q_continue_loss), where lm_loss sums per-example mean CE,
    q_halt is BCE against exact correctness of the current prediction, and q_continue (HRM, or TRM
    with no_ACT_continue=False) is BCE against the bootstrapped target.
    """

    def __init__(self, model: ACTModel, loss_type: str):
        super().__init__()
        self.model = model
        self.loss_fn = LOSSES[loss_type]

    def initial_carry(self, batch: Batch) -> ACTCarry:
        return self.model.initial_carry(batch)

    def forward(self, carry: ACTCarry, batch: Batch, return_keys: tuple[str, ...] = ()) -> tuple[ACTCarry, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Returns (new_carry, loss (scalar), metrics (sums), outputs[return_keys], all_halted)."""
        new_carry, outputs = self.model(carry, batch)
        labels = new_carry.current_data["labels"]
        logits = outputs["logits"]
        with torch.no_grad():
            outputs["preds"] = torch.argmax(logits, dim=-1)
            mask = labels != IGNORE_LABEL_ID
            counts = mask.sum(-1)
            divisor = counts.clamp_min(1).unsqueeze(-1)
            correct = mask & (outputs["preds"] == labels)
            seq_correct = correct.sum(-1) == counts
            valid = new_carry.halted & (counts > 0)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (correct.to(torch.float32) / divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_correct)).sum(),
                "steps": torch.where(valid, new_carry.steps, 0).sum(),
            }
        lm_loss = (self.loss_fn(logits, labels, ignore_index=IGNORE_LABEL_ID) / divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"], seq_correct.to(outputs["q_halt_logits"].dtype), reduction="sum")
        metrics.update(lm_loss=lm_loss.detach(), q_halt_loss=q_halt_loss.detach())
        q_continue_loss = 0
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()
        loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)
        detached = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return new_carry, loss, metrics, detached, new_carry.halted.all()
