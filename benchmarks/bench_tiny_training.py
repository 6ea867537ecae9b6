"""Accuracy of a CPU Sudoku preset against wall time: does `experiment=sudoku_tiny` (or `hrm_tiny`) learn?

    OMP_NUM_THREADS=2 python benchmarks/bench_tiny_training.py [--experiment sudoku_tiny] [--minutes 10]
        [--givens 45] [--givens-max 54] [--eval-every 150] [--out outputs/bench/tiny] [hydra overrides ...]
    OMP_NUM_THREADS=2 python benchmarks/bench_tiny_training.py --experiment hrm_tiny --minutes 15 --givens 45 --givens-max -1

Trains the preset's model and optimisation (calibration.md) on generated 9x9 Sudoku (20,000 train,
1,000 held-out test puzzles at `--givens`, or a uniform mix of `--givens`..`--givens-max` per
puzzle, the preset's 34..54 by default) for `--minutes` of wall time, evaluating on all 1,000
test puzzles every `--eval-every` optimizer steps, then prints one row per evaluation: step, wall
time since the first step (training + evaluations), exact and token accuracy, and the training
speed. Run it on a quiet machine; the load average before and after is printed because other
processes on the cores slow training down.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import archs  # noqa: F401  (registers trm and hrm)
from training.config import register_configs
from training.loop import run

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="sudoku_tiny", help="a Sudoku preset in conf/experiment/")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--givens", type=int, default=34)
    parser.add_argument("--givens-max", type=int, default=54, help="-1: every puzzle has --givens givens")
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--out", default="outputs/bench/tiny_training")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()

    register_configs()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        f"experiment={args.experiment}", f"data.build.givens={args.givens}",
        f"data.build.givens_max={'null' if args.givens_max < 0 else args.givens_max}", "max_steps=null",
        f"max_train_seconds={args.minutes * 60}", f"eval_interval={args.eval_every}",
        "checkpoint_interval=null", "logger=none", f"run_dir={out}", *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("pretrain", overrides=overrides))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = run(cfg)
    total = time.perf_counter() - t0
    load_after = os.getloadavg()

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start = next(r["time"] for r in records if r["step"] == 0)
    speed = {r["step"]: r["train/examples_per_s"] / cfg.global_batch_size for r in records if "train/examples_per_s" in r}
    givens = f"{args.givens}" if args.givens_max < 0 else f"{args.givens}..{args.givens_max}"
    print(f"\n{args.experiment} model on {givens}-givens Sudoku (20k train, 1000 test), torch threads {torch.get_num_threads()}, "
          f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after")
    print(f"{'step':>6} {'wall min':>9} {'exact':>7} {'token':>7}")
    for r in records:
        if "eval/all/exact_accuracy" in r:
            print(f"{r['step']:>6} {(r['time'] - start) / 60:>9.2f} {r['eval/all/exact_accuracy']:>7.3f} {r['eval/all/token_accuracy']:>7.3f}")
    steps_per_s = sum(speed.values()) / max(len(speed), 1)
    print(f"{result.step} steps, mean {steps_per_s:.2f} steps/s while training, {total / 60:.2f} min in all (incl. data and setup)")


if __name__ == "__main__":
    main()
