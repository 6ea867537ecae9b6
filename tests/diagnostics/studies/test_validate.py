"""The `validate` study and the `python -m diagnostics` entry point (config, outputs, exit codes)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from diagnostics.config import DiagnoseConfig
from diagnostics.registry import STUDIES
from diagnostics.registry import run_study
from diagnostics.studies.validate import VALIDATE_CHECKS, ValidateStudyConfig
import diagnostics.studies.validate as validate
from runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": ""}


def typed_config(*overrides: str) -> DiagnoseConfig:
    """Compose conf/diagnose.yaml with `overrides` and convert it as the entry point does."""
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("diagnose", overrides=list(overrides)))


def run_module(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diagnostics", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_default_config_is_typed_validate_study():
    cfg = typed_config()
    assert isinstance(cfg, DiagnoseConfig) and isinstance(cfg.study, ValidateStudyConfig)
    assert cfg.study.name == "validate" and tuple(cfg.study.checks) == VALIDATE_CHECKS
    assert (cfg.n, cfg.seed, cfg.device, cfg.dtype, cfg.checkpoint, cfg.data_path) == (512, 0, "cpu", "float32", None, None)
    assert cfg.wandb.mode == "disabled"
    assert {"spectrum", "validate"} <= set(STUDIES)


def test_mistyped_key_fails_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="Could not override 'study.chekcs'"):
        typed_config("study.chekcs=[shear]")


def test_validate_in_process_writes_table_and_summary(tmp_path):
    """The study on a fast subset: exit code 0, PASS rows in report.md, summary.json agrees."""
    cfg = typed_config("study.checks=[shear,logistic]")
    assert run_study(cfg, tmp_path) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| check | quantity | expected | estimated | error | tolerance | status | note |" in report
    assert report.count("| PASS |") == 3 and "FAIL" not in report
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is True and summary["n_rows"] == 3 and summary["n_failed"] == 0
    assert [(r["check"], r["quantity"], r["status"]) for r in summary["rows"]] == [
        ("shear", "lambda_1", "PASS"),
        ("shear", "lambda_2", "PASS"),
        ("logistic", "lambda_1", "PASS"),
    ]
    assert summary["rows"][2]["expected"] == pytest.approx(0.6931471805599453)
    assert (tmp_path / "metrics.jsonl").is_file() and (tmp_path / "manifest.json").is_file()


def test_clv_and_dimension_rows(tmp_path):
    """The CLV and Kaplan-Yorke rows (issue 15): every row PASS; CLV alignment errors and the linear
    dimensions at round-off (transients ~1e-17 or smaller); the Henon dimension within 1e-3 of its
    long-run value 1 + 0.41922 / 1.62319 (the batch-mean spectrum of B = 2048, T = 2000)."""
    cfg = typed_config("study.checks=[clv_eigen,clv_nonnormal,ky_linear,ky_henon]")
    assert run_study(cfg, tmp_path) == 0
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [r["check"] for r in rows] == ["clv_eigen"] * 6 + ["clv_nonnormal"] * 3 + ["ky_linear"] * 2 + ["ky_henon"]
    assert all(r["status"] == "PASS" for r in rows)
    assert max(r["error"] for r in rows[:9]) < 1e-10 and max(r["error"] for r in rows[9:11]) < 1e-12
    assert rows[7]["expected"] == pytest.approx(9.926245506651705) and rows[8]["expected"] == pytest.approx(0.7 / 16.49**0.5)
    assert rows[9]["expected"] == pytest.approx(2.151433284986890) and rows[10]["expected"] == pytest.approx(2.0 + math.log(1.4) / math.log(4.0), abs=1e-12)
    assert rows[11]["expected"] == pytest.approx(1.0 + 0.41922 / 1.62319) and rows[11]["error"] <= 1e-3


def test_failing_row_gives_exit_code_1(tmp_path, monkeypatch):
    """A row whose error exceeds its tolerance is reported as FAIL and the study returns 1."""
    bad = validate.CheckRow("shear", "lambda_1", 0.0, 0.5, 1e-3, note="forced")
    monkeypatch.setitem(validate.CHECKS, "shear", lambda ctx: [bad])
    assert run_study(typed_config("study.checks=[shear]"), tmp_path) == 1
    assert "| shear | lambda_1 | 0.000000 | 0.500000 | 0.500000 | 0.001000 | FAIL | forced |" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["passed"] is False


def test_unknown_check_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown validate check 'lorentz'; available: diagonal, symmetric"):
        run_study(typed_config("study.checks=[lorentz]"), tmp_path)


def test_subprocess_run_exits_0_with_pass_rows(tmp_path):
    out = tmp_path / "run"
    proc = run_module("study=validate", "study.checks=[shear]", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("| PASS |") == 2
    assert json.loads((out / "summary.json").read_text())["passed"] is True
    assert (out / "report.md").is_file() and (out / ".hydra" / "config.yaml").is_file()


def test_subprocess_bad_key_is_one_line_exit_2():
    proc = run_module("study.chekcs=[shear]")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "study.chekcs" in lines[0]


def test_subprocess_unknown_study_is_one_line_exit_2():
    proc = run_module("study=spectrumm")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no config 'study/spectrumm'; available: ")
    assert "spectrum" in proc.stderr and "validate" in proc.stderr


def test_multirun_uses_numbered_study_subdirs(tmp_path):
    proc = run_module("-m", "seed=0,1", "study.checks=[shear]", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0_validate", "1_validate"]
    assert json.loads((tmp_path / "1_validate" / "summary.json").read_text())["seed"] == 1


@pytest.mark.slow
def test_full_validate_study_passes(tmp_path):
    """Every known-answer row of analysis §7 within its tolerance (~20-35 s on one CPU core)."""
    assert run_study(typed_config(), tmp_path) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_failed"] == 0 and summary["n_rows"] == 34
    assert {r["check"] for r in summary["rows"]} == set(VALIDATE_CHECKS)
