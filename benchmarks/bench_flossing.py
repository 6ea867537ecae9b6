"""Gradient flossing on the tiny Sudoku preset: off vs on at two weights, several seeds each.

    OMP_NUM_THREADS=2 python benchmarks/bench_flossing.py [--minutes 5 | --steps 600] [--seeds 0,1,2]
        [--weights 1,10] [--target 0] [--k 1] [--window 8] [--interval 1] [--sub-batch 8]
        [--n 512] [--no-basin] [--out outputs/bench/flossing] [hydra overrides ...]

For each condition (regularize=none, then regularize=flossing at each weight) and seed, trains
`experiment=sudoku_tiny` (tiny TRM-MLP, generated 9x9 Sudoku with 34..54 givens) for `--minutes`
of wall time (the same budget for every run: flossing runs take fewer, dearer steps), or, with
`--steps`, for that many optimizer steps (the same updates for every run: the regularizer's effect
per step, independent of machine load; its cost is then the time overhead per step), then:
  - test exact accuracy: the end-of-run evaluation on all 1,000 test puzzles (full segment budget);
  - `python -m diagnostics study=spectrum` (k = 1, float32, `--n` test puzzles): median lambda_1
    of successes and failures, AUC(-lambda_1 -> success);
  - unless --no-basin, `study=basin` (3 restarts at sigma 0, 0.3, 1, 16 segments): the hard core,
    the fraction of failures no restart ever solves;
  - from metrics.jsonl: seconds per optimizer step (median over logged steps) and, for flossing
    runs, the exponent the term estimated (train/floss_lambda_1, mean of the first and the last
    10% of the logged steps).
Prints one row per run, then per condition the mean over seeds with a 95% t-interval, and the time
overhead per step against the unregularised runs; writes OUT/results.json and OUT/floss_lambda1.png
(the estimated lambda_1 against the step, one line per flossing run). Run it on a quiet machine:
the load average is printed, and other processes on the cores distort the time per step. Every
stage is a real command (printed); a stage whose outputs exist in OUT is skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, median, stdev

from omegaconf import OmegaConf
from scipy.stats import t as student_t

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (  # (key, header, format)
    ("steps", "steps", "{:.0f}"),
    ("sec_per_step", "s/step", "{:.3f}"),
    ("test_exact", "test exact", "{:.3f}"),
    ("spectrum_accuracy", "spec acc", "{:.3f}"),
    ("median_lambda1_success", "med l1 succ", "{:+.4f}"),
    ("median_lambda1_failure", "med l1 fail", "{:+.4f}"),
    ("auc_neg_lambda1", "AUC(-l1)", "{:.3f}"),
    ("hard_core_fraction", "hard core", "{:.3f}"),
    ("floss_lambda1_first", "floss l1 first", "{:+.4f}"),
    ("floss_lambda1_last", "floss l1 last", "{:+.4f}"),
)


def run_cmd(cmd: list[str], env: dict[str, str], log: Path) -> None:
    """Run `cmd` from the repository root, output to `log`; a failure stops with its tail."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode:
        sys.exit(f"error: command failed ({proc.returncode}); last lines of {log}:\n" + "\n".join(log.read_text().splitlines()[-15:]))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_summary(run_dir: Path) -> dict[str, float]:
    """Steps, median seconds per step, final test exact accuracy and the flossing estimates."""
    recs = records(run_dir)
    steps = [r for r in recs if "train/loss" in r]
    # examples_per_s is measured between consecutive logged steps (log_interval 1): its inverse
    # times the batch is that step's wall time; evaluations and checkpoints are not in it.
    batch = OmegaConf.load(run_dir / "config.yaml").global_batch_size
    sec = [batch / r["train/examples_per_s"] for r in steps[1:] if r.get("train/examples_per_s")]
    evals = [r for r in recs if "eval/all/exact_accuracy" in r]
    out = {"steps": float(steps[-1]["step"]) if steps else math.nan, "sec_per_step": median(sec) if sec else math.nan,
           "test_exact": evals[-1]["eval/all/exact_accuracy"] if evals else math.nan}
    lam = [(r["step"], r["train/floss_lambda_1"]) for r in steps if "train/floss_lambda_1" in r]
    if lam:
        tenth = max(1, len(lam) // 10)
        out["floss_lambda1_first"] = mean(v for _, v in lam[:tenth])
        out["floss_lambda1_last"] = mean(v for _, v in lam[-tenth:])
        out["floss_trace"] = lam
    return out


def data_path(run_dir: Path) -> str:
    """The dataset the run trained on (its manifest records the resolved folder)."""
    return json.loads((run_dir / "manifest.json").read_text())["dataset"]["path"]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (nan with fewer than 2 values)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    if len(values) < 2:
        return values[0], math.nan
    return mean(values), student_t.ppf(0.975, len(values) - 1) * stdev(values) / math.sqrt(len(values))


def fmt(fmt_str: str, value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt_str.format(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time per run")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run instead of a wall-time budget")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--weights", default="1,10", help="flossing weights (besides off)")
    parser.add_argument("--target", type=float, default=0.0)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--interval", type=int, default=1)
    parser.add_argument("--sub-batch", type=int, default=8)
    parser.add_argument("--n", type=int, default=512, help="test puzzles of the spectrum study (basin: n/2)")
    parser.add_argument("--no-basin", action="store_true", help="skip the basin study")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "flossing")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every training run")
    args = parser.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    py = sys.executable
    seeds = [int(s) for s in args.seeds.split(",") if s]
    conditions = {"off": ["regularize=none"]}
    for w in (float(x) for x in args.weights.split(",") if x):
        conditions[f"w={w:g}"] = ["regularize=flossing", f"regularize.weight={w}", f"regularize.target={args.target}", f"regularize.k={args.k}",
                                  f"regularize.window={args.window}", f"regularize.interval={args.interval}", f"regularize.sub_batch={args.sub_batch}"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows: dict[str, dict[int, dict]] = {}
    for name, reg in conditions.items():
        for seed in seeds:
            folder = out / name.replace("=", "")  # no '=' in a Hydra override's value
            run_dir = folder / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            if not (run_dir / "done").exists():
                budget = ([f"max_steps={args.steps}", "max_train_seconds=null"] if args.steps
                          else ["max_steps=null", f"max_train_seconds={args.minutes * 60}"])
                run_cmd([py, "pretrain.py", "experiment=sudoku_tiny", f"seed={seed}", *budget,
                         "checkpoint_interval=null", "logger=none", "progress=false", f"run_dir={run_dir}", "resume=auto", *reg, *args.overrides],
                        env, run_dir / "train.log")
                (run_dir / "done").write_text("")
            row = train_summary(run_dir)
            checkpoint, data = run_dir / "checkpoints" / "last.pt", data_path(run_dir)
            common = [f"checkpoint={checkpoint}", f"data_path={data}", "seed=0", "wandb.mode=disabled"]
            spectrum = folder / f"seed{seed}_spectrum"
            if not (spectrum / "summary.json").exists():
                run_cmd([py, "-m", "diagnostics", "study=spectrum", *common, f"n={args.n}", "study.k=1", f"hydra.run.dir={spectrum}"],
                        env, folder / f"seed{seed}_spectrum.log")
            summary = json.loads((spectrum / "summary.json").read_text())
            row.update(spectrum_accuracy=summary["accuracy"], median_lambda1_success=summary["median_lambda1_success"],
                       median_lambda1_failure=summary["median_lambda1_failure"], auc_neg_lambda1=summary["auc_neg_lambda1"])
            if not args.no_basin:
                basin = folder / f"seed{seed}_basin"
                if not (basin / "summary.json").exists():
                    run_cmd([py, "-m", "diagnostics", "study=basin", *common, f"n={max(args.n // 2, 8)}", "study.restarts=3",
                             "study.sigmas=[0.0,0.3,1.0]", "study.segments_basin=16", f"hydra.run.dir={basin}"], env, folder / f"seed{seed}_basin.log")
                b = json.loads((basin / "summary.json").read_text())
                row["hard_core_fraction"] = math.nan if b.get("hard_core_ever") is None else b["hard_core_ever"]  # a fraction of the failures
            rows.setdefault(name, {})[seed] = row
    total = time.perf_counter() - t0
    load_after = os.getloadavg()

    # --- report ---------------------------------------------------------------------------------------
    header = f"{'condition':<10} {'seed':>5} " + " ".join(f"{h:>14}" for _, h, _ in COLUMNS)
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    print(f"\nflossing on sudoku_tiny: {budget} per run, seeds {seeds}, target {args.target:g}, k {args.k}, window {args.window}, "
          f"interval {args.interval}, sub-batch {args.sub_batch}; torch threads {env['OMP_NUM_THREADS']}; "
          f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after; {total / 60:.1f} min in all")
    print(header)
    summary: dict[str, dict] = {}
    for name, by_seed in rows.items():
        for seed, row in by_seed.items():
            print(f"{name:<10} {seed:>5} " + " ".join(f"{fmt(f, row.get(k)):>14}" for k, _, f in COLUMNS))
        summary[name] = {k: mean_ci([r.get(k, math.nan) for r in by_seed.values()]) for k, _, _ in COLUMNS}
    print("\nmean over seeds +- 95% t-interval half-width")
    print(f"{'condition':<10} " + " ".join(f"{h:>20}" for _, h, _ in COLUMNS))
    for name, stats in summary.items():
        cells = (fmt(f, stats[k][0]) + ("" if math.isnan(stats[k][1]) else " +- " + fmt(f, stats[k][1])) for k, _, f in COLUMNS)
        print(f"{name:<10} " + " ".join(f"{c:>20}" for c in cells))
    base = summary["off"]["sec_per_step"][0]
    for name in conditions:
        if name != "off":
            print(f"time per step {name}: {summary[name]['sec_per_step'][0]:.3f} s vs off {base:.3f} s: overhead {summary[name]['sec_per_step'][0] / base - 1:+.1%}")
    (out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                  "runs": {n: {str(s): {k: v for k, v in r.items()} for s, r in b.items()} for n, b in rows.items()},
                                                  "summary": summary}, indent=1))
    plot_traces(rows, out / "floss_lambda1.png", args.target)
    print(f"results: {out / 'results.json'}, figure: {out / 'floss_lambda1.png'}")


def plot_traces(rows: dict[str, dict[int, dict]], path: Path, target: float) -> None:
    """train/floss_lambda_1 against the step for every flossing run, with the target line."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, by_seed) in enumerate(rows.items()):
        for seed, row in by_seed.items():
            if "floss_trace" in row:
                steps, lam = zip(*row["floss_trace"])
                ax.plot(steps, lam, color=f"C{i}", alpha=0.7, linewidth=0.8, label=f"{name}" if seed == min(by_seed) else None)
    ax.axhline(target, color="k", linestyle=":", linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("estimated lambda_1 per sub-update")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
