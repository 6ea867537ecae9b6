"""CPU training speed: today's eager loop against the fast path, measured side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/bench_cpu_fast_path.py [--steps 150] [--chunk 10]
        [--variants eager,fast] [--noise-seed 1] [--givens 34 --givens-max 54] [hydra overrides ...]

Trains the `sudoku_tiny` preset (or the calibration config the official code's CPU speed was
measured on: `--givens 45 --givens-max -1`, every puzzle with 45 givens) `--steps` optimizer steps once per variant, from the same
seed, on the same batches, with the same random draws (each variant keeps its own torch/numpy RNG
state between its chunks). The variants run interleaved, `--chunk` steps each in turn, so load
from other processes falls on all of them alike; compare the ratio, not the absolute figures.

Variants (launcher settings; `onednn` is what `launcher=cpu|local` and the CPU presets do):
    eager    cpu_matmul=default compile=false   (the loop as it was: PyTorch's default BLAS, eager)
    onednn   cpu_matmul=onednn  compile=false
    compile  cpu_matmul=default compile=true  compile_scope=step
    step     cpu_matmul=onednn  compile=true  compile_scope=step    (the whole forward + loss)
    fast     cpu_matmul=onednn  compile=true  compile_scope=blocks  (each transformer block)

Prints, per variant: steps/s after the warm-up (the first `--warmup` steps, which include
torch.compile's compilation) and over all steps, the warm-up's extra seconds (compile time), the
ratio to `eager` (after the warm-up, and over all steps), and the training loss at step N and averaged over the last 20 steps. The loss
of an extra eager run from seed `--noise-seed` (0 to skip it) gives the seed-to-seed spread the
fast path's loss should fall within: equal learning per step, not bit-equal losses (oneDNN adds
in another order than MKL, and ACT training amplifies round-off).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import archs  # noqa: F401  (registers trm and hrm)
from runtime import dist as rdist
from training import state as ts
from training.config import register_configs
from training.fast_path import get_cpu_matmul, set_cpu_matmul
from training.loop import Trainer, derive_arch, prepare_data, set_determinism

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "eager": ["launcher.cpu_matmul=default", "launcher.compile=false"],
    "onednn": ["launcher.cpu_matmul=onednn", "launcher.compile=false"],
    "compile": ["launcher.cpu_matmul=default", "launcher.compile=true", "launcher.compile_scope=step"],
    "step": ["launcher.cpu_matmul=onednn", "launcher.compile=true", "launcher.compile_scope=step"],
    "fast": ["launcher.cpu_matmul=onednn", "launcher.compile=true", "launcher.compile_scope=blocks"],
}


@dataclass
class Run:
    """One variant's trainer, its private RNG state and its timings."""

    name: str
    trainer: Trainer
    matmul: str
    rng: dict
    batches: object
    losses: list[float] = field(default_factory=list)
    warmup_s: float = 0.0
    steady_s: float = 0.0


def build(name: str, overrides: list[str], seed: int, info: rdist.DistInfo, workdir: Path) -> Run:
    """A Trainer for `name`, constructed from `seed` exactly as `training.loop.run` does."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("pretrain", overrides=[*overrides, *VARIANTS[name.split("@")[0]], f"seed={seed}"]))
    set_determinism(cfg.launcher.deterministic)
    set_cpu_matmul(cfg.launcher.cpu_matmul)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    root = prepare_data(cfg, info)
    derive_arch(cfg, root, info.world_size)
    trainer = Trainer(cfg, info, workdir / name, root, None)
    trainer.t_start = time.perf_counter()
    return Run(name, trainer, cfg.launcher.cpu_matmul, ts.capture_rng(info.device), trainer.batches())


def advance(run: Run, steps: int) -> float:
    """`steps` training steps of `run` (its matmul routing and RNG state swapped in); seconds."""
    set_cpu_matmul(run.matmul)
    ts.restore_rng(run.rng, run.trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch, _position = next(run.batches)
        metrics = run.trainer.train_step(batch)
        run.losses.append(metrics["train/loss"])
    seconds = time.perf_counter() - t0
    run.rng = ts.capture_rng(run.trainer.device)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per variant (N)")
    parser.add_argument("--chunk", type=int, default=10, help="steps per turn when interleaving")
    parser.add_argument("--warmup", type=int, default=3, help="first steps timed apart (they include compilation)")
    parser.add_argument("--variants", default="eager,fast", help=f"comma-separated, from {','.join(VARIANTS)}; the first is the reference")
    parser.add_argument("--noise-seed", type=int, default=1, help="seed of an extra eager run giving the seed-to-seed loss spread (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--givens", type=int, default=34)
    parser.add_argument("--givens-max", type=int, default=54, help="-1: every puzzle has --givens givens (calibration.md)")
    parser.add_argument("--warm-cache", action="store_true", help="reuse torch.compile's on-disk cache (default: a fresh one, a first run's compile time)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (e.g. launcher=local)")
    args = parser.parse_args()
    names = args.variants.split(",")
    if unknown := [n for n in names if n not in VARIANTS]:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.noise_seed:
        names.append(f"eager@seed{args.noise_seed}")

    register_configs()
    overrides = [
        "experiment=sudoku_tiny", f"data.build.givens={args.givens}",
        f"data.build.givens_max={'null' if args.givens_max < 0 else args.givens_max}",
        "max_steps=null", "max_train_seconds=null", "logger=none", "progress=false", *args.overrides,
    ]
    info = rdist.init_distributed(rdist.resolve_device("cpu"), 30.0)
    matmul_before, deterministic_before = get_cpu_matmul(), torch.are_deterministic_algorithms_enabled()
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cpu-fast-") as tmp:
            if not args.warm_cache:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor_cache")
            runs = [build(n, overrides, args.noise_seed if "@" in n else args.seed, info, Path(tmp)) for n in names]
            for run in runs:  # warm-up (compilation) of every variant first, each timed on its own
                run.warmup_s = advance(run, args.warmup)
            done = args.warmup
            while done < args.steps:
                k = min(args.chunk, args.steps - done)
                for run in runs:
                    run.steady_s += advance(run, k)
                done += k
    finally:
        set_cpu_matmul(matmul_before)
        torch.use_deterministic_algorithms(deterministic_before)
        rdist.cleanup()
    load_after = os.getloadavg()

    steady = args.steps - args.warmup
    ref = runs[0]
    ref_rate = steady / ref.steady_s
    givens = f"{args.givens}" if args.givens_max < 0 else f"{args.givens}..{args.givens_max}"
    print(f"\nsudoku_tiny model on {givens}-givens Sudoku, {args.steps} steps per variant, interleaved in chunks of {args.chunk}; "
          f"torch threads {torch.get_num_threads()}, load average {load_before[0]:.2f} before / {load_after[0]:.2f} after")
    print(f"{'variant':<14} {'steps/s':>8} {'incl warm-up':>13} {'compile s':>10} {'ratio':>6} {'incl':>6} {'loss@N':>8} {'loss last20':>12}")
    for run in runs:
        rate = steady / run.steady_s
        total_rate = args.steps / (run.steady_s + run.warmup_s)
        compile_s = max(run.warmup_s - args.warmup / rate, 0.0)
        ref_total = args.steps / (ref.steady_s + ref.warmup_s)
        print(f"{run.name:<14} {rate:>8.3f} {total_rate:>13.3f} {compile_s:>10.1f} {rate / ref_rate:>6.2f} {total_rate / ref_total:>6.2f} "
              f"{run.losses[-1]:>8.4f} {statistics.fmean(run.losses[-20:]):>12.4f}")


if __name__ == "__main__":
    main()
