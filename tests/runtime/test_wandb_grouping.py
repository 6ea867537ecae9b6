"""W&B dashboard: training, evaluation and diagnostics runs of one sweep share a project and a
group, with job types train / eval / diagnose/<study>; summaries go up as tables, figures as
images. W&B runs offline (in tmp_path) or is replaced by a recording fake module; no network."""
from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diagnostics.config import DiagnoseConfig
from diagnostics.report import finish_study, new_figure, save_figure
from diagnostics.studies.spectrum import SpectrumStudyConfig
from runtime.cli import CONF_DIR
from runtime.errors import ConfigError
from runtime.logging import DEFAULT_PROJECT, MetricsSink, WandbConfig, checkpoint_run, dashboard_config
from tests.conftest import OFFICIAL_FIXTURES
from training import evaluate_job
from training.config import register_configs
from training.loop import run as train

TRM = OFFICIAL_FIXTURES / "trm_mlp"


class FakeRun:
    """What `wandb.init` returned: records its settings and everything logged to it."""

    def __init__(self, settings: dict):
        self.settings = settings
        self.logged: list[tuple[dict, int]] = []
        self.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: self.settings.setdefault("config_updates", []).append(values))
        self.finished = False

    def log(self, values: dict, step: int) -> None:
        self.logged.append((values, step))

    def finish(self) -> None:
        self.finished = True

    def logged_keys(self) -> dict[str, object]:
        return {k: v for values, _ in self.logged for k, v in values.items()}


class FakeTable:
    def __init__(self, columns, data):
        self.columns, self.data = columns, data


class FakeImage:
    def __init__(self, path):
        self.path = path


@pytest.fixture
def fake_wandb(monkeypatch) -> types.ModuleType:
    """A `wandb` module that records runs instead of writing them."""
    module = types.ModuleType("wandb")
    module.runs = []
    module.Settings = lambda **kwargs: kwargs
    module.Table, module.Image = FakeTable, FakeImage

    def init(**kwargs):
        module.runs.append(FakeRun(kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def our_run(folder: Path, logger: dict, experiment_name: str | None = None) -> Path:
    """A run directory of ours: config.yaml and an (empty) checkpoints/step_0000010.pt."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"experiment_name": experiment_name, "logger": logger}))
    ckpt = folder / "checkpoints" / "step_0000010.pt"
    ckpt.write_bytes(b"")
    return ckpt


def test_dashboard_config_fills_only_unset_fields():
    cfg = dashboard_config(WandbConfig(mode="offline"), "eval", checkpoint=TRM / "run/step_100")
    assert (cfg.mode, cfg.project, cfg.group, cfg.job_type) == ("offline", "Parity-ACT-torch", "parity", "eval")
    mine = WandbConfig(mode="online", project="mine", group="g", job_type="j", tags=["a"])
    assert dashboard_config(mine, "eval", checkpoint=TRM / "run/step_100", group="x") == mine
    assert dashboard_config(None, "diagnose/validate") == WandbConfig(mode="disabled", project=DEFAULT_PROJECT, job_type="diagnose/validate")
    assert dashboard_config(WandbConfig(), "train", group="sweepA").group == "sweepA"


def test_checkpoint_run_reads_the_training_runs_names(tmp_path):
    """Official run files: all_config.yaml's project_name/run_name. Ours: config.yaml's logger
    group, else the experiment, else the run name. Anything else: the folder's name."""
    assert checkpoint_run(TRM / "run/step_100") == {"project": "Parity-ACT-torch", "group": "parity"}
    grouped = our_run(tmp_path / "a", {"project": "P", "name": "TRM brave-fox", "group": "sweepA"})
    assert checkpoint_run(grouped) == {"project": "P", "group": "sweepA"}
    by_experiment = our_run(tmp_path / "b", {"project": "P", "name": "TRM brave-fox", "group": None}, experiment_name="exp")
    assert checkpoint_run(by_experiment) == {"project": "P", "group": "exp"}
    by_name = our_run(tmp_path / "c", {"project": "P", "name": "TRM brave-fox"})
    assert checkpoint_run(by_name) == {"project": "P", "group": "TRM brave-fox"}
    (tmp_path / "loose").mkdir()
    assert checkpoint_run(tmp_path / "loose" / "model.pt") == {"project": None, "group": "loose"}


def test_a_mistyped_mode_fails_when_the_config_is_built():
    with pytest.raises(ConfigError, match="wandb mode 'onlne' is not one of online, offline, disabled"):
        WandbConfig(mode="onlne")


def test_train_eval_and_diagnose_runs_share_project_and_group(fake_wandb, tmp_path):
    """Test hypothesis: one experiment's training run (job train, group = experiment name), an
    evaluation of its checkpoint (job eval) and a study of it (job diagnose/spectrum) land in one
    project and group; the study's summary goes up as a one-row table and its figure as an image."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        dict_cfg = compose("pretrain", overrides=[
            "arch=trm_debug", "data=path", f"data.path={TRM / 'data'}", f"run_dir={tmp_path / 'run'}", "experiment_name=sweepA",
            "max_steps=1", "global_batch_size=8", "progress=false", "logger.mode=offline",
        ])
    train(OmegaConf.to_object(dict_cfg))
    (train_run,) = fake_wandb.runs
    project = train_run.settings["project"]
    assert project.endswith("-ACT-torch")
    assert (train_run.settings["group"], train_run.settings["job_type"], train_run.finished) == ("sweepA", "train", True)
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())["logger"]
    assert (saved["group"], saved["job_type"]) == ("sweepA", "train")
    ckpt = tmp_path / "run/checkpoints/step_0000001.pt"

    wandb_on = WandbConfig(mode="offline")
    evaluate_job.run(evaluate_job.EvaluateConfig(checkpoint=str(tmp_path / "run"), data_path=str(TRM / "data"), output_dir=str(tmp_path / "eval"), n=4, wandb=wandb_on))
    eval_run = fake_wandb.runs[1]
    assert (eval_run.settings["project"], eval_run.settings["group"], eval_run.settings["job_type"]) == (project, "sweepA", "eval")
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert eval_run.logged == [({f"eval/all/{k}": v for k, v in metrics.items() if k not in ("checkpoint", "checkpoint_kind", "step", "seconds") and isinstance(v, (int, float))}, 1)]

    fig = new_figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "diag" / "lambda1_hist.png")
    cfg = DiagnoseConfig(study=SpectrumStudyConfig(), checkpoint=str(ckpt), wandb=wandb_on)
    summary = {"accuracy": 0.5, "auc_neg_lambda1": None, "mean_spectrum_success": [0.1, -0.2], "bootstrap": {"samples": 1000}}
    finish_study(tmp_path / "diag", cfg, study="lyap", summary=summary, report="# r", results=None, figures=[png], scalars=["accuracy"], checkpoint=ckpt, device="cpu")
    diag_run = fake_wandb.runs[2]
    assert (diag_run.settings["project"], diag_run.settings["group"], diag_run.settings["job_type"]) == (project, "sweepA", "diagnose/spectrum")
    logged = diag_run.logged_keys()
    assert logged["diag/lyap/accuracy"] == 0.5
    table = logged["diag/lyap/summary"]
    assert table.columns == ["accuracy", "auc_neg_lambda1", "mean_spectrum_success", "bootstrap"]
    assert table.data == [[0.5, None, "[0.1,-0.2]", '{"samples":1000}']]
    (image,) = logged["diag/lyap/lambda1_hist"]
    assert isinstance(image, FakeImage) and image.path == str(png)


def test_offline_run_folder_records_group_and_job_type(isolated_wandb):
    """A real offline run: the local run folder (for `wandb sync`) holds the group, job type and
    project, and the table is written as a W&B table file."""
    cfg = dashboard_config(WandbConfig(mode="offline"), "diagnose/spectrum", checkpoint=TRM / "run/step_100")
    with MetricsSink(isolated_wandb / "run", cfg, is_main=True, config={"n": 2}) as sink:
        assert (sink.run.group, sink.run.job_type, sink.run.project) == ("parity", "diagnose/spectrum", "Parity-ACT-torch")
        sink.log_table("diag/lyap/summary", [{"accuracy": 0.5, "spectrum": [0.1, -0.2]}], step=0)
    (run_dir,) = (isolated_wandb / "wb" / "wandb").glob("offline-run-*")
    record_file = next(run_dir.glob("run-*.wandb"))
    deadline = time.monotonic() + 20  # the W&B service process may still be writing the record
    while b"diagnose/spectrum" not in record_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    record = record_file.read_bytes()
    for text in (b"diagnose/spectrum", b"parity", b"Parity-ACT-torch"):
        assert text in record
    (table_file,) = (run_dir / "files" / "media" / "table" / "diag" / "lyap").glob("summary_*.table.json")
    assert json.loads(table_file.read_text()) == {"columns": ["accuracy", "spectrum"], "data": [[0.5, "[0.1,-0.2]"]]}
