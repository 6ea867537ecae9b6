"""The README's main command, shrunk: python -m diagnostics.demo --quick runs every stage and writes the report.

Test hypothesis: the demo's stages compose (data -> train -> evaluate -> five studies -> report)
and a re-run with the same --out skips finished stages instead of redoing or corrupting them.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("spectrum", "displacement", "extended", "basin", "clv", "stats")


def run_demo(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "diagnostics.demo", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = run_demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_stage_leaves_its_outputs(demo_out):
    assert (demo_out / "data" / "test" / "dataset.json").is_file()
    assert (demo_out / "train" / "checkpoints" / "last.pt").is_file()
    metrics = json.loads((demo_out / "eval" / "metrics.json").read_text())
    assert metrics["count"] == 64 and 0.0 <= metrics["exact_accuracy"] <= 1.0
    for study in STUDIES:
        folder = demo_out / "studies" / study
        assert (folder / "summary.json").is_file() and (folder / "manifest.json").is_file(), study


def test_report_links_non_empty_figures(demo_out):
    report = (demo_out / "report.md").read_text()
    links = [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(links) >= 1 + len(STUDIES)
    for link in links:
        png = demo_out / link
        assert png.is_file() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG", link
    for heading in ("Finite-time Lyapunov spectrum", "exact accuracy"):
        assert heading in report


def test_report_compares_restarts_with_early_pruning(demo_out):
    """The restart-and-select evaluation (16 puzzles, 3 trajectories each) is in the report: the
    policy table's first row is the plain trajectory (compute 1.00, its accuracy), best of 3 costs
    3.00, and the figure exists."""
    metrics = json.loads((demo_out / "eval_restarts" / "metrics.json").read_text())
    rows = metrics["restarts"]["policies"]
    assert metrics["count"] == 16 and metrics["restarts"]["k"] == 3
    report = (demo_out / "report.md").read_text()
    section = report.split("## Restarts against early pruning, at equal compute")[1]
    plain = rows[0]
    assert plain["policy"] == "best of 1 (q_halt)" and plain["exact_accuracy"] == metrics["restarts"]["exact_accuracy_plain"]
    assert f"| best of 1 (q_halt) | 1.00 | {plain['exact_accuracy']:.3f} " in section
    assert "| best of 3 (q_halt) | 3.00 |" in section and "prune at segment" in section
    assert "![accuracy against compute](restart_policies.png)" in section


def test_rerun_skips_finished_stages(demo_out):
    before = (demo_out / "train" / "checkpoints" / "last.pt").stat().st_mtime_ns
    proc = run_demo(demo_out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (demo_out / "train" / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    assert "$ " not in proc.stdout  # no stage command was run again


def test_report_starts_with_the_verdict_from_the_studies(demo_out):
    """The verdict's counts are the studies' own: failures at the budget from the displacement
    summary, fates from the extended summary, each with its n."""
    report = (demo_out / "report.md").read_text()
    assert report.startswith("# rrdyn demo report\n\n## Verdict\n\n")
    disp = json.loads((demo_out / "studies" / "displacement" / "summary.json").read_text())
    ext = json.loads((demo_out / "studies" / "extended" / "summary.json").read_text())
    verdict = report.split("## The model")[0]
    if disp["n_failure"]:
        settled = disp["cells"]["B"]["count"]
        assert f"- {settled} of {disp['n_failure']} failures (" in verdict
    if ext["n_failure_at_budget"]:
        later = ext["fate_counts"]["solved_later"]
        assert f"- {later} of {ext['n_failure_at_budget']} failures (" in verdict and "are solved later" in verdict
    assert "Published values (analysis.md §9" in verdict
