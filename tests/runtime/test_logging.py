"""Rank-aware logger and tqdm, and the metrics sink in disabled and offline W&B modes."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from runtime.errors import ConfigError
from runtime.logging import (
    MetricsSink,
    WandbConfig,
    get_logger,
    rank0_tqdm,
    resolve_wandb_mode,
    wandb_api_key_available,
)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logger_prefix_and_rank_gating(caplog, monkeypatch):
    log = get_logger("rrdyn.test")
    monkeypatch.setenv("RANK", "0")
    with caplog.at_level(logging.INFO, logger="rrdyn.test"):
        log.info("step %d", 3)
        monkeypatch.setenv("RANK", "1")
        log.info("dropped on rank 1")
        log.warning("kept")
    assert [r.getMessage() for r in caplog.records] == ["[rank 0] step 3", "[rank 1] kept"]
    assert get_logger("rrdyn.test") is log and len(log.filters) == 1


def test_rank0_tqdm(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert rank0_tqdm(range(3)).disable
    monkeypatch.setenv("RANK", "0")
    bar = rank0_tqdm(range(3), disable=False)
    assert not bar.disable
    bar.close()
    assert rank0_tqdm(range(3), disable=True).disable


def test_mode_resolution(isolated_wandb, caplog):
    assert not wandb_api_key_available()
    with caplog.at_level(logging.WARNING):
        assert resolve_wandb_mode("online") == "offline"
    assert "no API key was found" in caplog.text and "logging offline instead" in caplog.text
    (isolated_wandb / "netrc").write_text("machine api.wandb.ai login user password abc123\n")
    assert wandb_api_key_available() and resolve_wandb_mode("online") == "online"
    assert resolve_wandb_mode("disabled") == "disabled"
    with pytest.raises(ConfigError, match="mode 'dryrun' is not one of online, offline, disabled"):
        resolve_wandb_mode("dryrun")


def test_disabled_mode_writes_only_jsonl(isolated_wandb):
    run_dir = isolated_wandb / "run"
    with MetricsSink(run_dir, WandbConfig(mode="disabled"), is_main=True) as sink:
        sink.log({"train/lm_loss": torch.tensor(0.5), "train/count": 3}, step=1)
        sink.log({"train/lr": 1e-4, "eval/all/nan": float("nan")}, step=2)
        rows = [{"idx": 0, "lam": 0.1}, {"idx": 1, "ok": True}]
        path = sink.log_table("diag/lyap/table", rows, step=2)
        assert sink.run is None
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["train/lm_loss"] == 0.5 and records[0]["train/count"] == 3
    assert records[1]["train/lr"] == 1e-4 and math.isnan(records[1]["eval/all/nan"])
    table = json.loads(path.read_text())
    assert table == {"columns": ["idx", "lam", "ok"], "data": [[0, 0.1, None], [1, None, True]]}
    assert read_jsonl(run_dir / "media.jsonl")[0]["path"] == "tables/diag_lyap_table.step_2.json"
    assert not (isolated_wandb / "wb").exists() and not (run_dir / "wandb").exists()


def test_non_main_rank_writes_nothing(isolated_wandb):
    sink = MetricsSink(isolated_wandb / "run", WandbConfig(mode="offline"), is_main=False)
    sink.log({"a": 1.0}, step=1)
    sink.close()
    assert sink.wandb_mode == "disabled" and not (isolated_wandb / "run").exists()


def test_offline_mode_writes_a_local_wandb_run(isolated_wandb):
    """Test hypothesis: offline mode creates wandb/offline-run-*/run-*.wandb under $WANDB_DIR
    without any network or login, logs scalars, a table and an image, and still writes
    metrics.jsonl."""
    from PIL import Image

    png = isolated_wandb / "basin.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(png)
    run_dir = isolated_wandb / "run"
    cfg = WandbConfig(mode="offline", project="rrdyn-test", name="unit", tags=["cpu"])
    with MetricsSink(run_dir, cfg, is_main=True, config={"lr": 1e-4}) as sink:
        assert sink.wandb_mode == "offline" and sink.run is not None
        sink.log({"train/lm_loss": 1.25}, step=1)
        sink.log_table("eval/all/table", [{"a": 1}], step=1)
        sink.log_images("diag/basin", [png], step=2)
        sink.update_config({"num_params": 123})
    runs = list((isolated_wandb / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert read_jsonl(run_dir / "metrics.jsonl")[0]["train/lm_loss"] == 1.25
    assert read_jsonl(run_dir / "media.jsonl")[1] == {
        "step": 2, "key": "diag/basin", "kind": "images", "paths": [str(png)]
    }
    with MetricsSink(run_dir, WandbConfig(mode="disabled"), is_main=True) as sink:
        with pytest.raises(FileNotFoundError, match="image"):
            sink.log_images("x", ["no.png"], step=1)
