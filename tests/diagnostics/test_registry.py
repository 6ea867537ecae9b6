"""The study registry: every registered study has its conf/study YAML and back, and adding a study
is one module + one YAML + one registry entry.

Test hypothesis of the toy: a study made only of a schema (a `BatchedStudyConfig` subclass), a
per-batch function (final-segment drift of z_H per example), a summary (its mean over the sample)
and a headline, registered at test time with a YAML on Hydra's search path, runs end to end
through the command-line entry (diagnostics/__main__.py run in-process as `python -m diagnostics`
with argv) on the official TRM-MLP fixture, and `diagnostics.collect` then shows its headline
column with the mean of an independent rollout of the same examples in the same batches (same
operations, so equal to round-off).
"""
from __future__ import annotations

import json
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from diagnostics import collect
from diagnostics.adapters.step_map import SubUpdateMap
from diagnostics.adapters.trajectory import record_rollout
from diagnostics.config import BatchedStudyConfig, DiagnoseConfig
from diagnostics.driver import BatchedRun, drive
from diagnostics.inputs import load_study_inputs
from diagnostics.registry import STUDIES, Study, register_configs
from diagnostics.report import settings_table
from runtime.errors import ConfigError
from tests.conftest import OFFICIAL_FIXTURES
from training.fast_path import cpu_matmul_routing

REPO = Path(__file__).resolve().parents[2]
TRM = OFFICIAL_FIXTURES / "trm_mlp"
N, BATCH = 4, 2


# --- registry and conf/study agree ----------------------------------------------------------------------

def test_every_study_has_its_yaml_and_every_yaml_its_study():
    yamls = {p.stem for p in (REPO / "conf" / "study").glob("*.yaml")}
    assert yamls == set(STUDIES)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_yaml_extends_its_schema_and_restates_its_defaults(name):
    """Each conf/study/<name>.yaml lists its schema first and composes to the schema's defaults."""
    text = (REPO / "conf" / "study" / f"{name}.yaml").read_text()
    defaults = [line.strip() for line in text.splitlines() if line.strip().startswith("- ")]
    assert defaults[:2] == [f"- /schema/study/{name}@_here_", "- _self_"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("diagnose", overrides=[f"study={name}"]))
    assert cfg.study == STUDIES[name].schema() and cfg.study.name == name


def test_batched_and_run_studies_are_told_apart():
    assert [name for name, s in STUDIES.items() if s.batched] == ["spectrum", "displacement", "extended", "basin", "clv"]
    assert all(s.run is not None for s in STUDIES.values() if not s.batched)
    with pytest.raises(ValueError, match="needs batch, summarise and report"):
        Study("half", BatchedStudyConfig, batch=lambda run, rows, batch: {})
    with pytest.raises(ValueError, match="subclasses BatchedStudyConfig"):
        Study("wrong", DiagnoseConfig, batch=lambda run, rows, batch: {}, summarise=lambda *a: {}, report=str)


@pytest.mark.parametrize("name", [name for name, s in STUDIES.items() if s.batched])
@pytest.mark.parametrize("segments", [0, -3])
def test_segments_zero_or_negative_is_refused_before_loading(name, segments, tmp_path):
    """Every batched study refuses segments <= 0 in one line, before the checkpoint is read (the
    path does not exist); None means the checkpoint's halt_max_steps."""
    cfg = DiagnoseConfig(study=STUDIES[name].schema(segments=segments), checkpoint=str(tmp_path / "missing"), data_path=str(tmp_path))
    with pytest.raises(ConfigError, match=rf"^study.segments={segments} must be >= 1 \(or null: the checkpoint's halt_max_steps\)$"):
        drive(STUDIES[name], cfg, tmp_path / "out")


# --- a toy study, added as a user would -------------------------------------------------------------------

@dataclass
class ToyStudyConfig(BatchedStudyConfig):
    """The toy's settings: only its name (and the inherited budget S)."""

    name: str = "toy"


def toy_batch(run: BatchedRun, rows: slice, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per example: index and the drift of z_H over the last of S segments."""
    traj = record_rollout(SubUpdateMap(run.inputs.core, batch), run.segments)
    return {"index": run.inputs.index[rows].astype(np.int64), "final_drift": traj.drift_zH[:, -1].numpy()}


def toy_summary(results: dict[str, np.ndarray], meta: dict[str, Any], settings: ToyStudyConfig, seed: int) -> dict[str, Any]:
    return {**meta, "mean_final_drift": float(results["final_drift"].mean())}


def toy_report(summary: dict[str, Any]) -> str:
    return "# Toy\n\n" + settings_table(summary, ["n", "segments", "mean_final_drift"])


TOY = Study("toy", ToyStudyConfig, (("toy final drift", "mean_final_drift", None),), batch=toy_batch, summarise=toy_summary, report=toy_report,
            scalars=("mean_final_drift",))
TOY_YAML = "defaults:\n  - /schema/study/toy@_here_\n  - _self_\n\nname: toy\nsegments: null\n"


@pytest.fixture
def toy_registered(tmp_path, monkeypatch) -> Path:
    """The toy in STUDIES and its schema in the ConfigStore; returns a config dir holding
    study/toy.yaml (for `hydra.searchpath`). Both are removed afterwards."""
    conf = tmp_path / "conf"
    (conf / "study").mkdir(parents=True)
    (conf / "study" / "toy.yaml").write_text(TOY_YAML)
    monkeypatch.setitem(STUDIES, "toy", TOY)
    register_configs()
    yield conf
    ConfigStore.instance().repo["schema"]["study"].pop("toy.yaml", None)


def independent_final_drift(checkpoint: Path, data: Path) -> float:
    """Mean final-segment drift of z_H of the seeded sample, rolled in the toy's batches."""
    inputs = load_study_inputs(str(checkpoint), str(data), n=N, seed=0)
    finals = [record_rollout(SubUpdateMap(inputs.core, batch), inputs.arch.halt_max_steps).drift_zH[:, -1] for _, _, batch in inputs.batches(BATCH)]
    return float(torch.cat(finals).mean())


def test_toy_study_runs_through_the_cli_and_collect_shows_its_headline(toy_registered, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["diagnostics", "study=toy", f"checkpoint={TRM / 'run'}", f"data_path={TRM / 'data'}", f"n={N}", f"batch_size={BATCH}",
            f"hydra.run.dir={out}", f"hydra.searchpath=[file://{toy_registered}]"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delitem(sys.modules, "diagnostics.__main__", raising=False)  # imported by other tests; runpy runs a fresh copy
    runpy.run_module("diagnostics", run_name="__main__")  # as `python -m diagnostics`, in this process

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["study"], summary["n"], summary["segments"]) == ("toy", N, 4)  # segments null -> halt_max_steps of the fixture
    with cpu_matmul_routing("onednn", "cpu_matmul"):  # the studies' default routing (bit-for-bit comparison)
        expected = independent_final_drift(TRM / "run", TRM / "data")
    assert summary["mean_final_drift"] == pytest.approx(expected, rel=1e-12)
    with np.load(out / "results.npz") as z:
        assert z["final_drift"].shape == (N,) and np.all(np.diff(z["index"]) > 0)
    assert sorted(p.name for p in (out / "shards").glob("batch_*.npz")) == ["batch_000000.npz", "batch_000001.npz"]
    assert "| mean_final_drift |" in (out / "report.md").read_text()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["diag/toy/mean_final_drift"] == summary["mean_final_drift"]

    capsys.readouterr()
    assert collect.main([str(out)]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert cells["study"] == "toy" and float(cells["toy final drift"]) == pytest.approx(expected, rel=1e-5)  # 6 printed digits
    (found,) = collect.find_runs([out]).rows
    assert found["toy final drift"] == summary["mean_final_drift"]
