"""The fast training path: fp32 matmuls through oneDNN on CPU, and the step under torch.compile.

On a CPU the training step of the small presets is matmul-bound (about 80% of an eager step is
`aten::mm`). PyTorch's CPU wheels send fp32 matmuls to MKL, which on AMD processors runs its AVX2
code path; oneDNN, also linked in, has AVX-512 fp32 kernels and measured 2-3x the MKL throughput
on the project's 2-core AMD EPYC machines for the presets' shapes (benchmarks/bench_cpu_fast_path.py).
PyTorch routes fp32 matmuls to oneDNN only when `torch.backends.mkldnn.matmul.fp32_precision` is
"bf16", which *allows* oneDNN to compute in bfloat16. On processors with fast bf16 units (AMX) it
may do so, which would change the numerics, so `set_cpu_matmul("onednn")` first checks on a probe that the products
keep fp32 accuracy and otherwise leaves the setting alone with a warning: the fast path never
trains in a precision other than the configured one.

`launcher.compile` compiles either the whole forward and loss of the training step (scope "step":
the largest fusion, one graph; on a 2-core CPU a 30-80 s compile) or each transformer block in
place (scope "blocks": one small graph reused by every block application, ~15 s; it fuses the
norms, SwiGLU gating and residual adds around the matmuls). On the tiny preset, interleaved with
the eager loop on a 2-core machine: oneDNN alone 1.3-1.75x the eager step, with compiled blocks
1.5-2.9x, with the whole step compiled 1.9-2.8x (figures vary with the load of shared machines).
`compile_model` is `torch.compile(dynamic=False)` with inductor's random ops falling back to
eager's (`fallback_random`), so the compiled step draws the ACT exploration from the same torch
generator as the eager one: both paths see the same random numbers and a checkpoint's RNG state
resumes either of them exactly.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch

from runtime.errors import ConfigError
from runtime.logging import get_logger

log = get_logger(__name__)

CPU_MATMULS = ("default", "onednn")
# Relative error (against float64) a probe product may have and still count as fp32 math: fp32
# accumulation over K = 256 gives ~1e-7, a bfloat16 down-conversion ~1e-3.
FP32_PROBE_TOLERANCE = 1e-5


@functools.lru_cache(maxsize=None)
def onednn_keeps_fp32() -> bool:
    """Whether oneDNN, allowed bf16 math, still multiplies fp32 matrices to fp32 accuracy here.

    Runs one (256 x 256) @ (256 x 256) product with the setting switched on (restored after) and
    compares it with the float64 product. Cached: the answer depends only on the processor.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(256, 256, generator=generator) for _ in range(2))
    exact = a.double() @ b.double()
    before = torch.backends.mkldnn.matmul.fp32_precision
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        got = (a @ b).double()
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before
    return float((got - exact).norm() / exact.norm()) < FP32_PROBE_TOLERANCE


def set_cpu_matmul(choice: str, key: str = "launcher.cpu_matmul") -> str:
    """Route CPU fp32 matmuls ("default": PyTorch's BLAS, "onednn": oneDNN where the probe shows
    fp32 accuracy) and return the line start-up logs. Process-wide; CUDA is unaffected. `key`
    names the setting in messages.

    Raises:
        ConfigError: `choice` is not one of CPU_MATMULS.
    """
    if choice not in CPU_MATMULS:
        raise ConfigError(f"{key}={choice!r} is not one of {', '.join(CPU_MATMULS)}")
    if choice == "default":
        torch.backends.mkldnn.matmul.fp32_precision = "none"
        return "CPU fp32 matmuls: PyTorch's default BLAS"
    if not onednn_keeps_fp32():
        torch.backends.mkldnn.matmul.fp32_precision = "none"
        log.warning("%s=onednn: oneDNN would compute fp32 matmuls in bfloat16 on this processor; keeping the default BLAS", key)
        return "CPU fp32 matmuls: PyTorch's default BLAS (oneDNN would round to bfloat16 here)"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"  # oneDNN path; the probe showed fp32 math
    return "CPU fp32 matmuls: oneDNN (probe: fp32 accuracy kept)"


def get_cpu_matmul() -> str:
    """The current routing, as `set_cpu_matmul` names it (to restore it afterwards)."""
    return "onednn" if torch.backends.mkldnn.matmul.fp32_precision == "bf16" else "default"


@contextlib.contextmanager
def cpu_matmul_routing(choice: str, key: str) -> Iterator[str]:
    """`set_cpu_matmul(choice)` for the duration of a block (evaluate.py, the studies), then the
    routing found before; yields the start-up line."""
    before = get_cpu_matmul()
    line = set_cpu_matmul(choice, key)
    try:
        yield line
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16" if before == "onednn" else "none"


def compile_model(model: torch.nn.Module) -> Callable:
    """`model` under torch.compile: static shapes (the ACT carry never changes shape), eager's
    random stream (see the module docstring). The returned module shares `model`'s parameters."""
    return torch.compile(model, dynamic=False, options={"fallback_random": True})


COMPILE_SCOPES = ("step", "blocks")


def compile_training(model: torch.nn.Module, enabled: bool, scope: str) -> Callable:
    """What the training step calls: `model` itself (eager, or with its blocks compiled in place
    for scope "blocks") or the compiled forward and loss (scope "step").

    Raises:
        ConfigError: `scope` is not one of COMPILE_SCOPES.
    """
    if scope not in COMPILE_SCOPES:
        raise ConfigError(f"launcher.compile_scope={scope!r} is not one of {', '.join(COMPILE_SCOPES)}")
    if not enabled:
        return model
    if scope == "blocks":
        compile_blocks(model)
        return model
    return compile_model(model)


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile every transformer block of `model` in place (`nn.Module.compile`: state-dict keys
    unchanged), the rest stays eager; returns how many. One small graph per block and grad mode
    compiles in a fraction of the whole step's time and fuses most of what is not a matmul (the
    norms, SwiGLU's gating, the residual adds, their backward)."""
    from model_core.layers import ReasoningBlock  # noqa: PLC0415

    blocks = [m for m in model.modules() if isinstance(m, ReasoningBlock)]
    for block in blocks:
        block.compile(dynamic=False, options={"fallback_random": True})
    return len(blocks)
