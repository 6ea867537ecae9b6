"""`python -m diagnostics.collect`: one table over a folder of runs whose summaries are made by
the studies' own `summarise` functions (so the headline keys cannot drift from the studies),
with partial and corrupt runs listed rather than fatal."""
from __future__ import annotations

import csv
import io
import math
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diagnostics.collect import find_runs, main, natural_key, short_names
from diagnostics.registry import STUDIES
from diagnostics.studies import displacement, spectrum
from diagnostics.studies.stats import run_stats
from runtime.errors import UserError
from tests.diagnostics.studies.test_stats import stats_config, synthetic_runs

REPO = Path(__file__).resolve().parents[2]


def write_summary(run_dir: Path, summary: dict) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / ".hydra").mkdir()


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    """A multirun folder: spectrum (2 checkpoints), displacement, stats, a partial job, a corrupt one."""
    root = tmp_path_factory.mktemp("multirun") / "2026-01-01_00-00-00"
    success = np.arange(20) < 12
    lam = np.where(success, -0.1, 0.1)[:, None] + np.linspace(0, 0.05, 20)[:, None] * np.array([[1.0, 0.5]])
    meta = {"n": 20, "sub_updates_per_segment": 21, "checkpoint": "/ckpt/trm/step_58590"}
    write_summary(root / "0_spectrum", spectrum.summarise({"exact": success, "lambda": lam}, {**meta, "study": "spectrum"}, seed=0))
    write_summary(root / "10_spectrum", spectrum.summarise({"exact": success, "lambda": -lam}, {**meta, "study": "spectrum",
                                                                                               "checkpoint": "/ckpt/hrm/step_26040"}, seed=0))
    d_late = np.where(success, 1e-6, 1.0) * np.linspace(1, 2, 20)
    write_summary(root / "1_displacement", displacement.summarise({"exact": success, "success": success, "d_late": d_late},
                                                                  {**meta, "study": "displacement"}, displacement.DisplacementStudyConfig(), seed=0))
    spec, disp, _ = synthetic_runs(tmp_path_factory.mktemp("inputs"))
    assert run_stats(stats_config(spec, disp), root / "2_stats") == 0
    (root / "3_displacement" / ".hydra").mkdir(parents=True)  # started, never finished
    (root / "4_spectrum" / "shards").mkdir(parents=True)
    (root / "4_spectrum" / "summary.json").write_text("{not json")
    (root / "5_extended" / "shards").mkdir(parents=True)  # killed before its summary
    return root


def test_table_rows_headlines_and_left_out_runs(multirun):
    """One row per finished run in natural job order; the headline values are those of each
    summary (AUC with its CI); the partial and corrupt runs are listed, not fatal."""
    found = find_runs([multirun])
    assert [Path(r["run"]).name for r in found.rows] == ["0_spectrum", "1_displacement", "2_stats", "10_spectrum"]
    spec = json.loads((multirun / "0_spectrum" / "summary.json").read_text())
    row = found.rows[0]
    assert row["AUC(-lambda1)"] == spec["auc_neg_lambda1"] == 1.0 and row["AUC(-lambda1) ci95"] == spec["auc_neg_lambda1_ci95"]
    assert row["checkpoint"] == "trm/step_58590" and row["n"] == 20 and row["accuracy"] == pytest.approx(0.6)
    assert found.rows[3]["AUC(-lambda1)"] == 0.0 and found.rows[3]["checkpoint"] == "hrm/step_26040"
    disp = found.rows[1]
    assert (disp["A settled&correct"], disp["B settled&wrong"], disp["C unsettled&correct"], disp["D unsettled&wrong"]) == (12, 0, 0, 8)
    stats = json.loads((multirun / "2_stats" / "summary.json").read_text())
    assert found.rows[2]["AUC(q_halt)"] == stats["auc"]["q_halt"]["auc"] and found.rows[2]["CV AUC +lambda1"] == stats["logistic"]["auc_full"]["auc"]
    assert all(row.get(col) is not None for row, study in zip(found.rows, ["spectrum", "displacement", "stats", "spectrum"])
               for col, _, _ in STUDIES[study].headlines)
    skipped = {Path(p).name: reason for p, reason in found.skipped}
    assert set(skipped) == {"3_displacement", "4_spectrum", "5_extended"}
    assert skipped["4_spectrum"].startswith("unreadable summary.json") and skipped["3_displacement"].startswith("partial")


def test_command_line_writes_markdown_and_csv(multirun, tmp_path, capsys):
    assert main([str(multirun), "--out", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv")]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "t.md").read_text()
    lines = printed.splitlines()
    assert lines[0].startswith("| run | study | checkpoint | n | accuracy |") and len([ln for ln in lines if ln.startswith("| ")]) == 5
    assert "| 1.000000 [1.000000, 1.000000] |" in printed and "Not collected:" in printed and "5_extended: partial" in printed
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert [r["study"] for r in rows] == ["spectrum", "displacement", "stats", "spectrum"]
    assert float(rows[0]["AUC(-lambda1) lo"]) == 1.0 and rows[1]["AUC(-lambda1)"] == "" and rows[1]["tau"] != ""


def test_missing_directory_is_one_line_exit_2(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        main([str(tmp_path / "nope")])
    with pytest.raises(UserError, match="no study runs"):
        main([str(tmp_path)])
    proc = subprocess.run([sys.executable, "-m", "diagnostics.collect", str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'nope'} does not exist"


def test_natural_order_and_short_checkpoint_names():
    assert sorted(["m/10_a", "m/2_b", "m/1_c"], key=natural_key) == ["m/1_c", "m/2_b", "m/10_a"]
    names = short_names(["/a/x/run/s1", "/a/y/run/s1", "/a/y/run/s2"])
    assert names == {"/a/x/run/s1": "x/run/s1", "/a/y/run/s1": "y/run/s1", "/a/y/run/s2": "y/run/s2"}
    assert short_names(["/c/trm/s1", "/c/hrm/s1"]) == {"/c/trm/s1": "trm/s1", "/c/hrm/s1": "hrm/s1"}


def test_escape_rate_ratio_between_two_extended_runs(tmp_path, capsys):
    """Two extended runs (e.g. TRM and HRM) with kappa per module evaluation 0.02 [0.016, 0.025]
    and 0.005 [0.004, 0.00625]: the ratio 0.25 and its CI exp(ln 0.25 +- 1.96 sqrt(s1^2 + s2^2)),
    s = ln(hi / lo) / 3.92 for each, here both ln(1.5625) / 3.92."""
    import math

    from diagnostics.collect import kappa_ratio

    for name, kappa, ci in (("trm", 0.02, [0.016, 0.025]), ("hrm", 0.005, [0.004, 0.00625])):
        write_summary(tmp_path / name, {"study": "extended", "checkpoint": f"/x/{name}/step_1", "n": 64, "accuracy_at_budget": 0.5,
                                        "kappa_per_segment": kappa * 8, "kappa_per_segment_ci95": [c * 8 for c in ci],
                                        "kappa_per_module_evaluation": kappa, "kappa_per_module_evaluation_ci95": ci})
    s = math.log(1.5625) / (2 * 1.959964)
    ratio, ci = kappa_ratio(0.005, [0.004, 0.00625], 0.02, [0.016, 0.025])
    assert ratio == pytest.approx(0.25) and ci == pytest.approx([0.25 * math.exp(-1.959964 * math.sqrt(2) * s), 0.25 * math.exp(1.959964 * math.sqrt(2) * s)])
    assert kappa_ratio(0.005, [0.0, 0.01], 0.02, [0.016, 0.025]) == (0.25, None)  # a CI reaching 0: no ratio CI
    assert main([str(tmp_path), "--kappa-ref", "trm"]) == 0
    out = capsys.readouterr().out
    assert "Escape rates of the extended runs" in out and "ratio to " in out
    rows = [line for line in out.split("Escape rates")[1].splitlines() if line.startswith(f"| {tmp_path}")]
    hrm, trm = (next(r for r in rows if f"/{name} |" in r) for name in ("hrm", "trm"))
    assert hrm.endswith(f"| 0.250000 [{ci[0]:.6f}, {ci[1]:.6f}] |") and trm.endswith("| 1.000000 |")


def write_sweep_checkpoint(root: Path, mode: str, sigma: float, seed: int, values: dict) -> str:
    """A training run folder (config.yaml + checkpoints/last.pt's path) and its study and
    evaluate outputs elsewhere under `root`, as launch/augment_sweep.sh lays them out."""
    run = root / "train" / f"{mode}_{sigma:g}" / str(seed)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"seed: {seed}\naugment:\n  mode: {mode}\n  sigma: {sigma}\n")
    ckpt = str(run / "checkpoints" / "last.pt")
    (run / "evaluate").mkdir()
    (run / "evaluate" / "metrics.json").write_text(json.dumps({"exact_accuracy": values["exact"], "token_accuracy": 0.9, "checkpoint": ckpt}))
    tag = f"{mode}_{sigma:g}_{seed}"
    write_summary(root / "studies" / "spectrum" / tag, {"study": "spectrum", "checkpoint": ckpt, "n": 100, "accuracy": values["exact"],
                                                        "median_lambda1_success": values["l_succ"], "median_lambda1_failure": values["l_fail"],
                                                        "auc_neg_lambda1": values["auc"], "auc_neg_lambda1_ci95": [0.5, 1.0]})
    cells = {c: {"count": n} for c, n in zip("ABCD", (60, values["B"], 5, values["D"]))}
    write_summary(root / "studies" / "displacement" / tag, {"study": "displacement", "checkpoint": ckpt, "n": 100, "accuracy": 0.6, "cells": cells})
    basin = root / "studies" / "basin" / tag
    write_summary(basin, {"study": "basin", "checkpoint": ckpt, "n": 50, "accuracy": 0.6, "n_failures": 20, "hard_core_ever": values["core"]})
    (basin / "restarts" / "shards").mkdir(parents=True)  # the study's own resumable pass: not a partial run
    return ckpt


def test_sweep_table_means_and_t_intervals_per_condition(tmp_path, capsys):
    """--by augment.mode,augment.sigma: three seeds of `none` with test exact 0.7, 0.8, 0.9 give the
    mean 0.8 and the 95% t-interval 0.8 +- t(0.975, 2) * 0.1 / sqrt(3) = 0.8 +- 0.248414; failures
    settled is B / (B + D) per checkpoint (1/4, 2/4, 3/4 -> 0.5); a condition with one seed has a
    mean and no interval; a checkpoint without config.yaml is listed, not placed."""
    from diagnostics.collect import find_evaluations, sweep_table

    for seed, exact, b in ((0, 0.7, 10), (1, 0.8, 20), (2, 0.9, 30)):
        write_sweep_checkpoint(tmp_path, "none", 0.0, seed, {"exact": exact, "l_succ": -0.1 * (seed + 1), "l_fail": 0.1, "auc": 0.9,
                                                             "B": b, "D": 40 - b, "core": 0.5})
    write_sweep_checkpoint(tmp_path, "multi_perturbed_ce", 0.001, 0, {"exact": 0.75, "l_succ": -0.2, "l_fail": 0.2, "auc": 0.95, "B": 0, "D": 0,
                                                                      "core": 0.25})
    write_summary(tmp_path / "studies" / "spectrum" / "official", {"study": "spectrum", "checkpoint": str(tmp_path / "official.pt"), "n": 10,
                                                                   "accuracy": 0.5})
    found = find_runs([tmp_path])
    assert found.skipped == []  # basin's restarts/shards folder is part of its finished run
    rows, left_out = sweep_table(found, find_evaluations([tmp_path]), ["augment.mode", "augment.sigma"])
    none = next(r for r in rows if r["augment.mode"] == "none")
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert none["augment.sigma"] == "0.0" and none["checkpoints"] == 3 and none["seeds"] == "0,1,2"
    assert none["test exact"] == pytest.approx(0.8) and none["test exact ci95"] == pytest.approx([0.8 - half, 0.8 + half])
    assert none["median lambda1 success"] == pytest.approx(-0.2) and none["median lambda1 success ci95"] == pytest.approx([-0.2 - half, -0.2 + half])
    assert none["median lambda1 failure ci95"] == pytest.approx([0.1, 0.1]) and none["AUC(-lambda1)"] == pytest.approx(0.9)
    assert none["failures settled"] == pytest.approx(0.5) and none["failures settled ci95"] == pytest.approx([0.5 - 2.5 * half, 0.5 + 2.5 * half])
    assert none["hard core"] == pytest.approx(0.5) and none["hard core n"] == 3
    multi = next(r for r in rows if r["augment.mode"] == "multi_perturbed_ce")
    assert multi["augment.sigma"] == "0.001" and multi["test exact"] == pytest.approx(0.75) and multi["test exact ci95"] is None
    assert multi["failures settled"] is None and multi["failures settled n"] == 0  # no failures in cells B, D
    assert len(left_out) == 1 and "official.pt: no config.yaml" in left_out[0]
    assert main([str(tmp_path), "--by", "augment.mode,augment.sigma"]) == 0
    out = capsys.readouterr().out
    assert "Per condition of augment.mode, augment.sigma" in out and "| none | 0.0 | 3 | 0,1,2 | 0.800000 [" in out
    assert "Not in a condition:" in out and "Not collected" not in out
    with pytest.raises(UserError, match=r"--by augment.nope: no collected checkpoint could be placed .*its config.yaml has no augment.nope"):
        main([str(tmp_path), "--by", "augment.nope"])
