"""Does `experiment=maze_tiny` learn? Valid-path and exact accuracy against step and wall time.

    OMP_NUM_THREADS=2 python benchmarks/bench_maze_tiny.py [--minutes 10] [--steps N]
        [--eval-every 200] [--eval-n 500] [--out outputs/bench/maze_tiny] [hydra overrides ...]

Trains the preset as configured (its generated mazes, model and optimisation; extra Hydra overrides
such as `arch.hidden_size=96` or `data.build.size=9` go last) until `--steps` optimizer steps or
`--minutes` of wall time, whichever comes first (`--steps 0`: the preset's own `max_steps`),
evaluating on `--eval-n` test mazes (all when 0) every `--eval-every` steps. Prints one row per
evaluation: step, wall time since the first step (training + evaluations), valid-path accuracy
(analysis.md §1: any shortest S-G path counts), exact accuracy (the labelled path), token accuracy.

The machine's load average is sampled every 10 s during the run and its mean and maximum are
printed: other processes on the cores slow training, so compare step counts across runs and
wall times only between runs on an equally quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import archs  # noqa: F401  (registers trm and hrm)
from training.config import register_configs
from training.loop import run

REPO = Path(__file__).resolve().parents[1]


class LoadSampler:
    """Samples the 1-minute load average every `every` seconds in a daemon thread."""

    def __init__(self, every: float = 10.0) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every,), daemon=True)

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (0: the preset's max_steps)")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-n", type=int, default=500, help="test mazes per evaluation (0: all)")
    parser.add_argument("--out", default="outputs/bench/maze_tiny")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()

    register_configs()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        "experiment=maze_tiny", f"max_train_seconds={args.minutes * 60}", f"eval_interval={args.eval_every}",
        f"data.eval_n={args.eval_n or 'null'}", "checkpoint_interval=null", "logger=none", "progress=false",
        f"run_dir={out}", *([f"max_steps={args.steps}"] if args.steps else []), *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("pretrain", overrides=overrides))
    t0 = time.perf_counter()
    with LoadSampler() as load:
        result = run(cfg)
    total = time.perf_counter() - t0

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start = next(r["time"] for r in records if r["step"] == 0)
    speed = [r["train/examples_per_s"] / cfg.global_batch_size for r in records if "train/examples_per_s" in r]
    b, a = cfg.data.build, cfg.arch
    print(f"\nmaze_tiny: {b.size}x{b.size} mazes, min_path {b.min_path}, unique_path {b.unique_path}, {b.n_train} train x "
          f"{b.num_aug + 1} dihedral, {b.n_test} test ({args.eval_n or 'all'} evaluated); {a.name} hidden {a.hidden_size} "
          f"mlp_t {getattr(a, 'mlp_t', None)} pos {a.pos_encodings} H{a.H_cycles}/L{a.L_cycles} halt {a.halt_max_steps}; "
          f"batch {cfg.global_batch_size}, lr {cfg.optim.lr}")
    print(f"torch threads {torch.get_num_threads()}, load average mean {sum(load.samples) / len(load.samples):.2f} "
          f"max {max(load.samples):.2f} over {len(load.samples)} samples")
    print(f"{'step':>6} {'wall min':>9} {'valid_path':>10} {'exact':>7} {'token':>7}")
    for r in records:
        if any(k.endswith("/valid_path_accuracy") for k in r):
            get = lambda name: next(v for k, v in r.items() if k.startswith("eval/") and k.endswith("/" + name))  # noqa: E731
            print(f"{r['step']:>6} {(r['time'] - start) / 60:>9.2f} {get('valid_path_accuracy'):>10.3f} "
                  f"{get('exact_accuracy'):>7.3f} {get('token_accuracy'):>7.3f}")
    steps_per_s = sum(speed) / max(len(speed), 1)
    print(f"{result.step} steps, mean {steps_per_s:.2f} steps/s while training, {total / 60:.2f} min in all (incl. data and setup)")


if __name__ == "__main__":
    main()
