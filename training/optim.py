"""The two optimizers of the official recipe.

`AdamATan2` trains every dense parameter. It is Adam with the division m / (sqrt(v) + eps)
replaced by atan2(m, sqrt(v)), which is bounded and needs no epsilon (Everett et al., 2024,
"Scaling Exponents Across Parameterizations and Optimizers"), plus decoupled weight decay. It
matches the update rule of the `adam-atan2` 0.0.3 package. That package's CUDA kernel
(`adam_atan2_backend`) often fails to build; here it is used only when it imports and the
parameters are on CUDA, and a pure-torch path, vectorised with `torch._foreach_*`, runs
otherwise. Both keep the same state keys (`step`, `exp_avg`, `exp_avg_sq`), so a checkpoint
resumes on either path.

`SparseEmbeddingSignSGD` trains the puzzle-embedding table, a buffer that receives gradient only
through the per-batch `local_weights` copy of the rows the batch used: it sums the gradient rows
per puzzle id (over all ranks) and moves each touched row by -lr * sign(sum).
"""
from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer

from runtime.dist import all_gather_rows, is_distributed
from runtime.errors import ConfigError


@functools.lru_cache(maxsize=None)
def fused_backend() -> ModuleType | None:
    """The compiled `adam_atan2_backend` extension, or None where it was not built (quietly)."""
    try:
        import adam_atan2_backend  # noqa: PLC0415 (optional compiled extension)
    except ImportError:
        return None
    return adam_atan2_backend


class AdamATan2(Optimizer):
    """Adam-atan2 with decoupled weight decay; per element, in fp32 (fp64 for fp64 params).

    At step t (1-indexed, per parameter):
        p <- p * (1 - lr * wd)
        m <- lerp(m, g, 1 - beta1)
        v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr / (1 - beta1^t) * atan2(m, sqrt(v) / sqrt(1 - beta2^t))
    lr = 0 is allowed (the schedule sets the rate before every step); a step at lr = 0 leaves
    the parameters unchanged but still advances t, m and v.

    Args:
        fused: None uses the CUDA kernel when it is importable and the tensors are on CUDA;
            False always uses pure torch; True requires the kernel (ConfigError without it).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.1,
        *,
        fused: bool | None = None,
    ):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        if fused and fused_backend() is None:
            raise ConfigError(
                "fused AdamATan2 was requested but adam_atan2_backend is not importable; "
                "reinstall adam-atan2 with --no-build-isolation on a machine with nvcc, or "
                "leave fused unset to use the pure-torch path"
            )
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.fused = fused

    def _use_kernel(self, device: torch.device) -> bool:
        return self.fused is not False and device.type == "cuda" and fused_backend() is not None

    @property
    def uses_fused_kernel(self) -> bool:
        """True when every parameter will be updated by the compiled CUDA kernel."""
        params = [p for g in self.param_groups for p in g["params"]]
        return bool(params) and all(self._use_kernel(p.device) for p in params)

    def describe_path(self) -> str:
        """One line saying which update path runs and why (logged at start-up)."""
        if self.uses_fused_kernel:
            return "AdamATan2: fused CUDA kernel (adam_atan2_backend)"
        if self.fused is False:
            return "AdamATan2: pure torch (optim.fused=false)"
        if fused_backend() is None:
            return "AdamATan2: pure torch (adam_atan2_backend not installed; `make setup-cuda` builds it on a GPU box)"
        return "AdamATan2: pure torch (parameters are not on CUDA)"

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update every parameter that has a gradient; parameters without one are skipped."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Bucket by (device, dtype, current step) so each bucket is a handful of foreach calls.
            buckets: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if self._use_kernel(p.device):
                    key = (p.device, p.dtype, "kernel")
                else:
                    key = (p.device, p.dtype, float(state["step"]))
                buckets.setdefault(key, []).append(p)
            for (device, _, kind), params in buckets.items():
                if kind == "kernel":
                    self._kernel_update(params, group, device)
                else:
                    self._torch_update(params, group, t=kind + 1.0)
        return loss

    def _kernel_update(self, params: list[torch.Tensor], group: dict, device: torch.device) -> None:
        """The package's fused kernel; it wants float32 step counters on the parameters' device."""
        states = [self.state[p] for p in params]
        for s in states:
            if s["step"].device != device:
                s["step"] = s["step"].to(device)
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        fused_backend().adam_atan2_cuda_impl_(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            steps,
            group["lr"],
            beta1,
            beta2,
            group["weight_decay"],
        )

    def _torch_update(self, params: list[torch.Tensor], group: dict, t: float) -> None:
        """Pure-torch update of one bucket (same device, dtype and step t, 1-indexed)."""
        lr, wd = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        for s in states:
            s["step"].fill_(t)

        # Math in fp32, or fp64 for fp64 parameters; bf16/fp16 tensors are upcast and written back.
        math_dtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
        upcast = params[0].dtype != math_dtype
        originals = (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states])
        if upcast:
            p_, m_, v_ = ([x.to(math_dtype) for x in xs] for xs in originals)
        else:
            p_, m_, v_ = originals
        g_ = [p.grad.to(math_dtype) for p in params]

        if lr * wd != 0.0:
            torch._foreach_mul_(p_, 1.0 - lr * wd)
        torch._foreach_lerp_(m_, g_, 1.0 - beta1)
        torch._foreach_mul_(v_, beta2)
        torch._foreach_addcmul_(v_, g_, g_, value=1.0 - beta2)
        denom = torch._foreach_sqrt(v_)
        torch._foreach_div_(denom, math.sqrt(1.0 - beta2**t))
        for m, d in zip(m_, denom):
            torch.atan2(m, d, out=d)  # no foreach atan2 in torch; d now holds the direction
        torch._foreach_add_(p_, denom, alpha=-lr / (1.0 - beta1**t))

        if upcast:
            for dst, src in zip(originals, (p_, m_, v_)):
                torch._foreach_copy_(dst, src)


def split_sparse_embedding_buffers(
    tensors: Iterable[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identify (weights (N, D), local_weights (B, D), local_ids (B,)) by their properties.

    local_weights is the one tensor with requires_grad; local_ids the one integer vector;
    weights the float matrix without grad. Raises ValueError for anything else.
    """
    tensors = list(tensors)
    grad = [t for t in tensors if t.requires_grad]
    ids = [t for t in tensors if t.ndim == 1 and not t.is_floating_point()]
    table = [t for t in tensors if t.ndim == 2 and t.is_floating_point() and not t.requires_grad]
    if not (len(tensors) == 3 and len(grad) == len(ids) == len(table) == 1 and grad[0].ndim == 2):
        shapes = [(tuple(t.shape), str(t.dtype), t.requires_grad) for t in tensors]
        raise ValueError(
            "SparseEmbeddingSignSGD expects exactly the sparse embedding's three buffers: "
            "weights (N, D) float, local_weights (B, D) with requires_grad, local_ids (B,) "
            f"integer; got (shape, dtype, requires_grad) = {shapes}"
        )
    weights, local_weights, local_ids = table[0], grad[0], ids[0]
    if weights.shape[1] != local_weights.shape[1] or local_ids.shape[0] != local_weights.shape[0]:
        raise ValueError(
            f"sparse embedding buffer shapes disagree: weights {tuple(weights.shape)}, "
            f"local_weights {tuple(local_weights.shape)}, local_ids {tuple(local_ids.shape)}"
        )
    return weights, local_weights, local_ids


@torch.no_grad()
def sign_sgd_rows_(
    weights: torch.Tensor,
    grad: torch.Tensor,
    ids: torch.Tensor,
    lr: float,
    weight_decay: float,
    deterministic: bool = False,
) -> None:
    """In place on rows `unique(ids)` of `weights` (N, D): p <- p (1 - lr wd) - lr sign(sum g).

    grad (B, D) holds one gradient row per entry of ids (B,); rows of duplicate ids are summed
    before the sign is taken. Untouched rows do not change (no decay either).
    On CPU the sum (index_add_, rows in batch order) is deterministic. On CUDA index_add_ uses
    atomics whose order varies; with `deterministic` the (B, D) sum is done on the CPU instead.
    """
    uid, inverse = torch.unique(ids.long(), return_inverse=True)  # sorted unique ids, (U,)
    sum_device = torch.device("cpu") if deterministic else grad.device
    sums = torch.zeros((uid.numel(), grad.shape[1]), dtype=grad.dtype, device=sum_device)
    sums.index_add_(0, inverse.to(sum_device), grad.to(sum_device))
    rows = weights[uid]  # (U, D), a copy
    rows.mul_(1.0 - lr * weight_decay).add_(sums.to(weights.device).sign(), alpha=-lr)
    weights.index_copy_(0, uid, rows)


class SparseEmbeddingSignSGD(Optimizer):
    """SignSGD with decoupled weight decay for the sparse puzzle-embedding table.

    `params` are the embedding module's three buffers (any order): the persistent fp32 table
    `weights` (N, D), the gradient carrier `local_weights` (B, D) and `local_ids` (B,). With
    world_size > 1 the (B, D) gradients and ids of all ranks are all-gathered first, so every
    rank applies the same update to its copy of the table.

    Args:
        deterministic: sum duplicate-id gradients in a fixed order even on CUDA (see
            `sign_sgd_rows_`); None follows `torch.are_deterministic_algorithms_enabled()`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        weight_decay: float,
        world_size: int = 1,
        *,
        deterministic: bool | None = None,
    ):
        params = list(params)
        split_sparse_embedding_buffers(params)
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.world_size = world_size
        self.deterministic = deterministic

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Apply one update from local_weights.grad; skipped when there is no gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        deterministic = self.deterministic
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        for group in self.param_groups:
            weights, local_weights, local_ids = split_sparse_embedding_buffers(group["params"])
            grad, ids = local_weights.grad, local_ids
            if grad is None:
                continue
            if self.world_size > 1:
                if not is_distributed():
                    raise RuntimeError(
                        f"world_size={self.world_size} but torch.distributed is not initialised"
                    )
                grad, ids = all_gather_rows(grad), all_gather_rows(ids)  # (world * B, ...)
            sign_sgd_rows_(
                weights, grad, ids, group["lr"], group["weight_decay"], deterministic=deterministic
            )
        return loss
