"""The README's main job (`make demo`): the whole pipeline at CPU scale, end to end, in about 9
minutes on 2 cores.

    python -m diagnostics.demo [--out outputs/demo/<time>] [--train-seconds 240] [--n 256] [--quick]

Stages (each one a real command a user can run alone, printed before it runs):
  1. data      python -m puzzles.build sudoku ...        generated 9x9 Sudoku, unique solutions
  2. train     python pretrain.py experiment=sudoku_tiny   tiny TRM-MLP, checkpoints + metrics.jsonl
  3. evaluate  python evaluate.py ...                      metrics.json + predictions.npz; then
               python evaluate.py restarts=K ...           restarts against early pruning at equal compute
  4. studies   python -m diagnostics study=...             spectrum, displacement, extended, basin, clv, stats
  5. report    OUT/report.md                               every study's report and figures in one page

Every stage writes into OUT (default outputs/demo/<date>_<time>); a stage whose outputs already
exist there is skipped, so re-running with the same --out after an interruption continues where it
stopped. W&B runs offline unless WANDB_MODE says otherwise. `--quick` shrinks everything (a
minute; used by the tests), it is not a meaningful experiment.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from diagnostics.registry import STUDIES
from diagnostics.report import new_figure, save_figure
from diagnostics.verdict import format_verdict
from training.restart_policies import format_policy_table

ROOT = Path(__file__).resolve().parents[1]  # the repository: stages run pretrain.py and evaluate.py from here
STUDY_ORDER = tuple(name for name, study in STUDIES.items() if study.of_checkpoint)  # registry order
STATS_INPUTS = ("spectrum", "displacement", "extended", "basin")  # what study=stats joins for the verdict


@dataclass
class DemoPlan:
    """Sizes of one demo run; `quick()` is the smoke-test version."""

    n_train: int = 20000
    n_test: int = 1000
    givens: int = 34  # each puzzle draws its givens from givens..givens_max: a difficulty mix
    givens_max: int = 54
    train_seconds: float = 300.0
    max_steps: int = 600
    eval_n: int = 512
    n: int = 512  # spectrum, displacement, stats: >= 100 failures at ~75% accuracy
    extended_n: int = 512
    basin_n: int = 192
    clv_n: int = 64
    restart_n: int = 128  # restart-and-select against early pruning (K trajectories each)
    restart_k: int = 3
    restart_sigma: float = 0.3
    extra_train: list[str] = field(default_factory=lambda: ["data.eval_n=128"])

    @classmethod
    def quick(cls) -> "DemoPlan":
        return cls(n_train=400, n_test=64, train_seconds=20.0, max_steps=20, eval_n=64, n=32, extended_n=16, basin_n=16, clv_n=8,
                   restart_n=16, restart_k=3, extra_train=["global_batch_size=32", "checkpoint_interval=10"])


def say(message: str) -> None:
    print(f"\n[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], env: dict[str, str]) -> None:
    """Run one stage's command from the repo root, streaming its output; stop the demo on failure.

    The stage's stderr (progress bars, log records) joins stdout, so `make demo > demo.log` keeps
    everything in order in one file; where that is not a terminal the bars print a whole line at
    an interval (runtime.progress) instead of one carriage-return update per step.
    """
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT, env=env, stderr=subprocess.STDOUT)
    if code:
        print(f"error: stage failed with exit code {code}: {' '.join(cmd[:3])} ...", file=sys.stderr)
        sys.exit(code)


def study_commands(out: Path, plan: DemoPlan, checkpoint: Path, data: Path, studies: list[str]) -> dict[str, list[str]]:
    """The diagnostics commands, keyed by study name (each writes into OUT/studies/<name>);
    stats joins the other `studies` run here."""
    py = sys.executable
    common = [f"checkpoint={checkpoint}", f"data_path={data}", "seed=0", "wandb.mode=${oc.env:WANDB_MODE,offline}"]

    def cmd(study: str, *extra: str) -> list[str]:
        return [py, "-m", "diagnostics", f"study={study}", *common, f"hydra.run.dir={out / 'studies' / study}", *extra]

    return {
        "spectrum": cmd("spectrum", f"n={plan.n}", "study.k=1"),  # lambda_1 is the first Benettin column: the same for any k
        "displacement": cmd("displacement", f"n={plan.n}"),
        "extended": cmd("extended", f"n={plan.extended_n}", "study.segments_ext=32"),
        "basin": cmd("basin", f"n={plan.basin_n}", "study.restarts=3", "study.sigmas=[0.0,0.3,1.0]", "study.segments_basin=16"),
        "clv": cmd("clv", f"n={plan.clv_n}", "study.k=2"),
        "stats": cmd("stats", f"n={plan.n}", "study.inputs=[" + ",".join(str(out / "studies" / name) for name in studies if name in STATS_INPUTS) + "]"),
    }


def link_figures(report: str, study: str) -> str:
    """Rewrite a study report's relative image links so they resolve from OUT/report.md, and
    demote its headings one level."""
    report = re.sub(r"!\[([^\]]*)\]\((?!/)([^)]+)\)", lambda m: f"![{m.group(1)}](studies/{study}/{m.group(2)})", report)
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", report, flags=re.M)


def write_report(out: Path, studies: list[str], eval_dir: Path, train_dir: Path, restart_dir: Path | None = None) -> Path:
    """OUT/report.md: the verdict (`diagnostics.verdict`, from the studies' summaries), the
    training and evaluation figures, restarts against early pruning (when `restart_dir` holds
    a restart-and-select evaluation), then each study's own report."""
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    summaries = {study: json.loads(path.read_text()) for study in studies if (path := out / "studies" / study / "summary.json").exists()}
    lines = [
        "# rrdyn demo report",
        "",
        format_verdict(summaries).rstrip(),
        "",
        "## The model",
        "",
        f"Checkpoint `{train_dir / 'checkpoints' / 'last.pt'}`, evaluated on {metrics.get('count')} test puzzles "
        f"({metrics.get('segments')} segments, no halting):",
        "",
        f"- exact accuracy **{metrics['exact_accuracy']:.3f}**, token accuracy {metrics['token_accuracy']:.3f}, "
        f"q_halt accuracy {metrics['q_halt_accuracy']:.3f}",
        "- exact accuracy by segment: " + ", ".join(f"{x:.3f}" for x in metrics["exact_accuracy_by_segment"]),
        "",
        "How to read it: each section below is one study (analysis of the inference trajectory, see",
        "README.md 'Reading the report'); every number comes with its settings, and every study folder",
        "under `studies/` holds `results.npz` (per-example arrays joined by `index`), `summary.json` and",
        "`manifest.json` (git commit, config, dataset and checkpoint hashes).",
    ]
    curve = plot_training(train_dir, out / "training_curve.png")
    if curve is not None:
        lines += ["", "![training loss and accuracy](training_curve.png)"]
    if restart_dir is not None and (restart_dir / "metrics.json").exists():
        lines += ["", restart_section(json.loads((restart_dir / "metrics.json").read_text()), out).rstrip()]
    for study in studies:
        path = out / "studies" / study / "report.md"
        if path.exists():
            lines += ["", link_figures(path.read_text(), study).rstrip()]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def restart_section(metrics: dict, out: Path) -> str:
    """Restart-and-select against early pruning, from a `restarts=K` evaluation's metrics.json:
    the q_halt selection gain with its CI, the policy table (`training.restart_policies`) and
    accuracy against compute as a figure (OUT/restart_policies.png)."""
    r = metrics["restarts"]
    ci = r["gain_ci95"] or [float("nan")] * 2
    rows = r["policies"]
    lines = [
        "## Restarts against early pruning, at equal compute",
        "",
        f"{r['k']} trajectories per puzzle on {metrics['count']} test puzzles: the plain one and {r['k'] - 1} restarts from a kicked "
        f"initial state, each run for the full {metrics['segments']} segments with the halting confidence recorded after every segment. "
        "Every policy below is replayed from these records and chooses without labels; compute counts segments run, in units of "
        "one plain trajectory.",
        "",
        f"- Restart-and-select (most confident of {r['k']}): exact {r['exact_accuracy_plain']:.3f} -> {r['exact_accuracy_selected']:.3f}, "
        f"gain **{r['gain']:+.3f}** (95% paired bootstrap CI {ci[0]:+.3f} to {ci[1]:+.3f}, n = {metrics['count']}); the oracle best-of-{r['k']} "
        f"(some restart right, a ceiling no label-free selector passes) is {r['oracle_best_of_k']:.3f}.",
        "- Pruning policies abandon a trajectory that is not confident at segment w and spend the rest of its budget on a fresh "
        "restart; 'vs best-of-k at matched compute' compares each policy with q_halt selection over the smallest number of full "
        "restarts costing at least as much.",
        "",
        format_policy_table(rows, metrics["count"]).rstrip(),
    ]
    fig = new_figure(6, 4)
    ax = fig.subplots()
    for family, marker in (("(q_halt)", "o-"), ("(vote)", "s--"), ("prune", "^"), ("adaptive", "v")):
        pts = [row for row in rows if family in row["policy"]]
        if pts:
            ax.errorbar([p["compute"] for p in pts], [p["exact_accuracy"] for p in pts], fmt=marker, capsize=3,
                        yerr=[[p["exact_accuracy"] - p["exact_ci95"][0] for p in pts], [p["exact_ci95"][1] - p["exact_accuracy"] for p in pts]],
                        label={"(q_halt)": "best of k, q_halt", "(vote)": "best of k, vote"}.get(family, family + " (per w)"))
    ax.axhline(r["oracle_best_of_k"], color="grey", lw=0.8, ls=":", label=f"oracle best of {r['k']}")
    ax.set(xlabel="compute (segments run / plain budget)", ylabel="exact accuracy (95% Wilson CI)")
    ax.legend(fontsize=8)
    save_figure(fig, out / "restart_policies.png")
    lines += ["", "![accuracy against compute](restart_policies.png)"]
    return "\n".join(lines) + "\n"


def plot_training(train_dir: Path, path: Path) -> Path | None:
    """Training loss and exact accuracy against step, from the run's metrics.jsonl."""
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in records if "train/loss" in r]
    if not rows:
        return None

    fig = new_figure(9, 3.5)
    loss_ax, acc_ax = fig.subplots(1, 2)
    steps = [r["step"] for r in rows]
    loss_ax.plot(steps, [r["train/loss"] for r in rows])
    loss_ax.set(xlabel="optimizer step", ylabel="train loss", yscale="log")
    # ACT accuracies are over the examples that halted at that step; steps where none did carry no value
    halted = [r for r in rows if r.get("train/count", 0) > 0]
    acc_ax.plot([r["step"] for r in halted], [r.get("train/accuracy", float("nan")) for r in halted], label="token")
    acc_ax.plot([r["step"] for r in halted], [r.get("train/exact_accuracy", float("nan")) for r in halted], label="exact")
    evals = [r for r in records if any(k.endswith("/exact_accuracy") and k.startswith("eval/") for k in r)]
    if evals:
        key = next(k for k in evals[0] if k.startswith("eval/") and k.endswith("/exact_accuracy"))
        acc_ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o", label="test exact")
    acc_ax.set(xlabel="optimizer step", ylabel="accuracy (halted train examples)", ylim=(0, 1))
    acc_ax.legend()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Run the demo for the command line `argv` (default sys.argv[1:])."""
    parser = argparse.ArgumentParser(prog="python -m diagnostics.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/demo/<date>_<time>)")
    parser.add_argument("--train-seconds", type=float, default=None, help=f"wall-time cap of training (default {DemoPlan.train_seconds:g})")
    parser.add_argument("--n", type=int, default=None, help="test examples sampled for the spectrum, displacement and extended studies")
    parser.add_argument("--studies", default=",".join(STUDY_ORDER), help="comma-separated subset of " + ",".join(STUDY_ORDER))
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute)")
    args = parser.parse_args(argv)
    plan = DemoPlan.quick() if args.quick else DemoPlan()
    if args.train_seconds is not None:
        plan.train_seconds = args.train_seconds
    if args.n is not None:
        plan.n = args.n
    studies = [s for s in args.studies.split(",") if s]
    unknown = sorted(set(studies) - set(STUDY_ORDER))
    if unknown:
        parser.error(f"unknown studies {unknown}; choose from {', '.join(STUDY_ORDER)}")

    out = (args.out or ROOT / "outputs" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    py = sys.executable
    t0 = time.perf_counter()
    say(f"output folder {out}")

    data = out / "data"
    say(f"1/5 data: {plan.n_train} train + {plan.n_test} test 9x9 Sudoku with {plan.givens}..{plan.givens_max} givens")
    if not (data / "test" / "dataset.json").exists():
        run([py, "-m", "puzzles.build", "sudoku", f"out={data}", f"n_train={plan.n_train}", f"n_test={plan.n_test}",
             f"givens={plan.givens}", f"givens_max={plan.givens_max}", "seed=0"], env)

    train_dir = out / "train"
    checkpoint = train_dir / "checkpoints" / "last.pt"
    say(f"2/5 train: tiny TRM-MLP, at most {plan.train_seconds:.0f} s of training (tqdm shows the rate)")
    if not checkpoint.exists() or not (train_dir / "done").exists():
        recipe = [f"data.build.out={data}", f"data.build.n_train={plan.n_train}", f"data.build.n_test={plan.n_test}", f"data.build.givens={plan.givens}",
                  f"data.build.givens_max={plan.givens_max}"]
        run([py, "pretrain.py", "experiment=sudoku_tiny", *recipe, f"run_dir={train_dir}", "resume=auto",
             f"max_train_seconds={plan.train_seconds}", f"max_steps={plan.max_steps}", *plan.extra_train], env)
        (train_dir / "done").write_text("")

    eval_dir = out / "eval"
    say(f"3/5 evaluate: {plan.eval_n} test puzzles (seeded sample), the full segment budget, no halting")
    if not (eval_dir / "metrics.json").exists():
        run([py, "evaluate.py", f"checkpoint={checkpoint}", f"data_path={data}", f"output_dir={eval_dir}", f"n={plan.eval_n}", "seed=0"], env)

    restart_dir = out / "eval_restarts"
    say(f"3/5 evaluate: restart-and-select, {plan.restart_k} restarts (sigma {plan.restart_sigma:g}) of {plan.restart_n} test puzzles, "
        "against early pruning at equal compute")
    if not (restart_dir / "metrics.json").exists():
        run([py, "evaluate.py", f"checkpoint={checkpoint}", f"data_path={data}", f"output_dir={restart_dir}", f"n={plan.restart_n}", "seed=0",
             f"restarts={plan.restart_k}", "select=q_halt", f"sigma={plan.restart_sigma}", "keep_logits=false"], env)

    commands = study_commands(out, plan, checkpoint, data, studies)
    for i, study in enumerate(studies, 1):
        say(f"4/5 study {i}/{len(studies)}: {study}")
        if not (out / "studies" / study / "summary.json").exists():
            run(commands[study], env)

    say("5/5 report")
    report = write_report(out, studies, eval_dir, train_dir, restart_dir)
    say(f"done in {(time.perf_counter() - t0) / 60:.1f} min. Report: {report}")


if __name__ == "__main__":
    main()
