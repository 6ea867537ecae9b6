"""Exponential moving average of a model's trainable parameters (TRM's `ema=True`).

Only parameters that require grad are averaged; buffers are not (the puzzle-embedding table and
the bf16 H_init/L_init keep their raw values), as in the official recipe. Shadow names have every
`_orig_mod.` component removed, so the same EMA state fits a model before and after
`torch.compile` and lines up with the unwrapped checkpoint keys.

Unlike the official code, which deep-copies the whole train state to evaluate the averaged
weights, `swapped(model)` copies the shadow into the live parameters and restores the raw ones
afterwards: one parameter-sized backup instead of a second model, optimizer and carry.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from runtime.errors import CheckpointError


def strip_compile_prefix(name: str) -> str:
    """Drop every `_orig_mod` path component that `torch.compile` inserts into parameter names."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name (compile prefix removed) -> parameter, for the parameters that require grad."""
    return {
        strip_compile_prefix(name): p for name, p in model.named_parameters() if p.requires_grad
    }


class EMA:
    """shadow <- (1 - decay) * param + decay * shadow, for each trainable parameter.

    The shadow tensors are clones with the parameters' dtype (fp32 here) and device. Call
    `update(model)` after every optimizer step on every rank: the parameters are identical across
    ranks, so the shadows stay identical too.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in _trainable(model).items()
        }

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Matching (shadow, parameter) lists; raises if the model's trainable set differs."""
        params = _trainable(model)
        if params.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - params.keys())
            extra = sorted(params.keys() - self.shadow.keys())
            raise ValueError(
                f"model parameters do not match the EMA: missing {missing[:5]}, extra {extra[:5]}"
            )
        names = list(self.shadow)
        return [self.shadow[n] for n in names], [params[n].detach() for n in names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every shadow tensor a fraction (1 - decay) of the way towards its parameter."""
        shadows, params = self._pairs(model)
        # lerp(s, p, 1 - mu) = s + (1 - mu) * (p - s) = mu * s + (1 - mu) * p, in one fused pass.
        torch._foreach_lerp_(shadows, params, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable parameters with the averaged values."""
        shadows, params = self._pairs(model)
        torch._foreach_copy_(params, shadows)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run the body with the EMA weights in `model`; the raw weights come back afterwards.

        The raw weights are restored even if the body raises. Do not step an optimizer inside.
        """
        _, params = self._pairs(model)
        with torch.no_grad():
            backup = [p.clone() for p in params]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)

    def state_dict(self) -> dict[str, Any]:
        """{"decay": float, "shadow": {name: tensor}} with compile-free names."""
        return {"decay": self.decay, "shadow": dict(self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy a saved shadow into this EMA (names may carry `_orig_mod.`); decay is restored."""
        saved = {strip_compile_prefix(k): v for k, v in state["shadow"].items()}
        if saved.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - saved.keys())
            extra = sorted(saved.keys() - self.shadow.keys())
            raise CheckpointError(
                f"EMA state does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for name, value in saved.items():
            if value.shape != self.shadow[name].shape:
                raise CheckpointError(
                    f"EMA state for {name} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(self.shadow[name].shape)}"
                )
            self.shadow[name].copy_(value)
        self.decay = float(state["decay"])
