"""The maze path end to end at CPU scale: the `maze_tiny` preset trains a few steps on generated
mazes, evaluate.py scores the checkpoint with exact and valid-path accuracy, and the displacement
study runs on it with success=valid_path.

Test hypothesis: the pieces compose, and the study's per-example valid-path success at the budget
equals evaluate.py's valid_path of the same examples (both roll the full budget without halting,
in float32, and apply `puzzles.kinds`' maze rule), so a maze study and a maze evaluation agree
example by example."""
from __future__ import annotations

import json

import numpy as np

from diagnostics.config import DiagnoseConfig
from diagnostics.registry import register_configs as register_study_configs
from diagnostics.registry import run_study
from diagnostics.studies.displacement import DisplacementStudyConfig
from puzzles.build import build_dataset
from puzzles.builders import MazeGenConfig
from tests.integration.helpers import train
from training import evaluate_job


def test_maze_tiny_trains_evaluates_and_is_studied_with_valid_path(tmp_path):
    data = build_dataset(MazeGenConfig(out=str(tmp_path / "maze"), size=7, min_path=6, unique_path=False, n_train=64, n_test=16, seed=0))
    run_dir = tmp_path / "run"
    train(["experiment=maze_tiny", "data=path", f"data.path={data}", "global_batch_size=16", "max_steps=3", "logger=none",
           "launcher=cpu", "progress=false", "data.eval_n=16", f"run_dir={run_dir}"])
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert checkpoint.is_file()

    metrics = evaluate_job.run(evaluate_job.EvaluateConfig(checkpoint=str(checkpoint), data_path=str(data), output_dir=str(tmp_path / "eval"),
                                                           device="cpu", keep_logits=False))
    assert metrics["puzzle_kind"] == "maze" and metrics["count"] == 16 and 0.0 <= metrics["valid_path_accuracy"] <= 1.0
    assert metrics["valid_path_accuracy"] >= metrics["exact_accuracy"]  # an exact answer is a valid path
    with np.load(tmp_path / "eval" / "predictions.npz") as z:
        by_index = dict(zip(z["index"].tolist(), z["valid_path"].tolist()))

    register_study_configs()
    out = tmp_path / "study"
    cfg = DiagnoseConfig(study=DisplacementStudyConfig(success="valid_path"), checkpoint=str(checkpoint), data_path=str(data), n=16, batch_size=8)
    assert run_study(cfg, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success_rule"] == "valid_path" and summary["puzzle_kind"] == "maze" and summary["n"] == 16
    with np.load(out / "results.npz") as z:
        assert [by_index[i] for i in z["index"].tolist()] == z["success"].tolist()
