"""Cost of finite-time Lyapunov estimation on a TRM model, relative to a plain rollout.

    OMP_NUM_THREADS=2 python benchmarks/bench_ftle_model.py [--batch 32] [--segments 1] [--func]

Model: TRM-MLP Sudoku shapes (hidden 512, H_cycles 3, L_cycles 6, 2 layers, mlp_t, seq 81 + 16
prefix), random weights, random Sudoku-like inputs, CPU, float32 (`--dtype float64` also works).
Costs do not depend on the weights. Measured, each over the same `--segments` segments from the
reset carry (21 sub-updates per segment), best of `--repeats`:

  rollout      plain recurrence, no tangents (`adapters.rollout`)
  lambda1      k = 1 with the closed-form JVPs (`segment_ftle(jvp_impl="manual")`)
  seed         k = 1 by `torch.autograd.functional.jvp` (the published notebook's method)
  spectrum     k = 8 with the closed-form JVPs
  func1/func8  k = 1 / 8 with `torch.func.jvp` (vmap over k), only with --func (slow)

Both sides run with `adapters.keep_freed_memory()` (glibc keeps freed blocks; fewer page faults)
unless --system-malloc.

Targets (diagnostics issue): lambda1 <= 3x rollout, seed / lambda1 >= 1.5 with the same lambda1
within 1e-4, spectrum <= 12x rollout. Use --hidden/--batch to measure at a reduced size on a busy
machine; the ratios are what to compare.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import archs  # noqa: F401  (registers trm and hrm)
from diagnostics.adapters.step_map import SubUpdateMap, initial_frame, keep_freed_memory, rollout, segment_ftle
from diagnostics.estimators.lyapunov import seed_method_lambda1
from model_core.layers import math_sdpa
from model_core.registry import build_model
from trm.config import TRMConfig


def make_map(args: argparse.Namespace) -> SubUpdateMap:
    cfg = TRMConfig(hidden_size=args.hidden, mlp_t=not args.attention, pos_encodings="rope" if args.attention else "none", forward_dtype=args.dtype)
    cfg.derive_from_data(vocab_size=11, seq_len=81, num_puzzle_identifiers=1, batch_size=args.batch)
    torch.manual_seed(0)
    core = build_model(cfg).model.inner.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randint(1, 11, (args.batch, 81), generator=g, dtype=torch.int32), "puzzle_identifiers": torch.zeros(args.batch, dtype=torch.int32)}
    return SubUpdateMap(core, batch)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time over `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--segments", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attention", action="store_true", help="TRM-att (RoPE attention) instead of mlp_t")
    ap.add_argument("--func", action="store_true", help="also time torch.func.jvp (k = 1 and 8)")
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's mmap threshold alone (more page faults)")
    args = ap.parse_args()
    tuned = False if args.system_malloc else keep_freed_memory()
    smap = make_map(args)
    z0 = smap.initial_state()
    n_steps = args.segments * smap.sub_updates_per_segment
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {'TRM-att' if args.attention else 'TRM-MLP'} hidden {args.hidden}, "
          f"batch {args.batch}, {args.dtype}, {args.segments} segment(s) = {n_steps} sub-updates, malloc tuned: {tuned}")

    def frame(k: int) -> torch.Tensor:
        return initial_frame(tuple(z0.shape), k, z0.dtype, z0.device, torch.Generator().manual_seed(1))

    def ftle(k: int, impl: str) -> Callable[[], torch.Tensor]:
        return lambda: segment_ftle(smap, segments=args.segments, k=k, tangents=frame(k), jvp_impl=impl).exponents()

    def seed() -> torch.Tensor:
        smap.reset()
        with math_sdpa():
            return seed_method_lambda1(smap.step, z0, n_steps, generator=torch.Generator().manual_seed(1))

    t_roll, _ = timed(lambda: rollout(smap, args.segments), args.repeats)
    rows = [("rollout", t_roll, None)]
    t_l1, lam1 = timed(ftle(1, "manual"), args.repeats)
    rows.append(("lambda1", t_l1, None))
    t_seed, lam_seed = timed(seed, max(1, args.repeats - 1))
    rows.append(("seed", t_seed, None))
    t_k8, _ = timed(ftle(8, "manual"), max(1, args.repeats - 1))
    rows.append(("spectrum", t_k8, None))
    if args.func:
        rows.append(("func1", timed(ftle(1, "func"), 1)[0], None))
        rows.append(("func8", timed(ftle(8, "func"), 1)[0], None))
    for name, seconds, _ in rows:
        print(f"{name:9s} {seconds:8.3f} s   {seconds / t_roll:6.2f}x rollout")
    diff = (lam1[:, 0].double() - lam_seed.double()).abs().max().item()
    print(f"seed / lambda1 time: {t_seed / t_l1:.2f}x   max |lambda1(manual) - lambda1(seed)| = {diff:.2e}")
    print(f"targets: lambda1 <= 3x rollout: {t_l1 / t_roll <= 3}; seed/lambda1 >= 1.5: {t_seed / t_l1 >= 1.5}; "
          f"agree within 1e-4: {diff <= 1e-4}; spectrum <= 12x rollout: {t_k8 / t_roll <= 12}")


if __name__ == "__main__":
    main()
