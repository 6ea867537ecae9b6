"""Cost of the Lyapunov estimator on the known-answer systems, per step and relative to a rollout.

    OMP_NUM_THREADS=1 python benchmarks/bench_lyapunov.py [--steps 200] [--repeats 3]
        [--device cpu|cuda] [--dtype float64|float32]

For each system prints milliseconds per step of: the plain rollout (step under no_grad), lambda_1
(`lyapunov_log_r` with k = 1: one jvp, a norm), the k-tangent spectrum (vmap over k jvps + one
batched QR, k = min(8, dim)), and the published notebook's method (`seed_method_lambda1`:
torch.autograd.functional.jvp), with each one's ratio to the rollout. Tiny systems (Henon,
Lorenz) measure the per-call overhead of forward-mode AD; the wide MLP map (dim 512) is the
regime of the models, where arithmetic dominates. The model benchmark is bench_ftle_model.py.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from diagnostics.estimators import systems
from diagnostics.estimators.lyapunov import lyapunov_log_r, seed_method_lambda1


def best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Minimum wall time of `fn` over `repeats` runs after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def rollout(system: systems.KnownSystem, z: torch.Tensor, n_steps: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(n_steps):
            z = system.step(z)
    return z


def bench(system: systems.KnownSystem, batch: int, args: argparse.Namespace) -> None:
    device, dtype, n = torch.device(args.device), getattr(torch, args.dtype), args.steps
    z0 = system.settle(system.sample(batch, torch.Generator().manual_seed(0), dtype).to(device), 100)
    k = min(8, system.dim)

    def gen() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(0)

    cases = {
        "rollout": lambda: rollout(system, z0, n),
        "lambda_1 (k=1)": lambda: lyapunov_log_r(system.step, z0, n_steps=n, k=1, generator=gen()),
        f"spectrum (k={k})": lambda: lyapunov_log_r(system.step, z0, n_steps=n, k=k, generator=gen()),
        "seed method": lambda: seed_method_lambda1(system.step, z0, n, gen()),
    }
    times = {name: best_seconds(fn, args.repeats, device) / n for name, fn in cases.items()}
    base = times["rollout"]
    for name, seconds in times.items():
        print(f"{system.name:>8} B={batch:<5} dim={system.dim:<4} {name:<16} {seconds * 1e3:8.3f} ms/step  {seconds / base:6.1f}x rollout")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, dtype {args.dtype}, {args.steps} steps")
    bench(systems.henon(), 1024, args)
    bench(systems.lorenz(), 1024, args)
    bench(systems.mlp_map(dim=512, hidden=1024, gain=1.5), 64, args)


if __name__ == "__main__":
    main()
