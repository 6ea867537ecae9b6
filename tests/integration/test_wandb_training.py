"""W&B from pretrain.py: the mode comes from the config, no API key means offline (never a login
prompt), metrics.jsonl is written whatever the mode. Rank-0-only logging is checked under
torchrun in test_dist.py."""
from __future__ import annotations

import pytest

from tests.integration.helpers import cli_env, compose_pretrain, read_metrics, run_cli, tiny_overrides, train, train_records


@pytest.mark.parametrize("env, group, expected", [
    ({"WANDB_MODE": "offline"}, "logger=wandb", "offline"),
    ({}, "logger=wandb", "online"),  # logger=wandb defaults to online (offline without a key, below)
    ({"WANDB_MODE": "online"}, "logger=none", "disabled"),
    ({}, "logger.mode=disabled", "disabled"),
])
def test_mode_comes_from_the_config(env, group, expected, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = compose_pretrain(tiny_overrides(tmp_path, tmp_path / "r", group))
    assert cfg.logger.mode == expected


def test_disabled_still_writes_metrics_jsonl(sudoku4, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_overrides(sudoku4, run_dir, "max_steps=3", "logger=wandb", "logger.mode=disabled"))
    assert sorted(train_records(run_dir)) == [1, 2, 3]
    assert not (run_dir / "wandb").exists()


def test_online_without_an_api_key_logs_offline_and_never_prompts(sudoku4, tmp_path):
    """No WANDB_API_KEY and an empty netrc: one warning, an offline run under run_dir/wandb that
    `wandb sync` can upload later, metrics.jsonl as usual. stdin is closed, so a login prompt
    would fail the run rather than hang it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("")
    env = cli_env(WANDB_MODE="online", HOME=str(home), NETRC=str(home / ".netrc"), WANDB_CONFIG_DIR=str(home / "wandb_config"),
                  WANDB_CACHE_DIR=str(home / "wandb_cache"))
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_DIR", None)
    run_dir = tmp_path / "run"
    proc = run_cli(["pretrain.py", *tiny_overrides(sudoku4, run_dir, "max_steps=3", "logger=wandb")], env=env, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "no API key was found" in output and "logging offline instead" in output
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    assert sorted(train_records(run_dir)) == [1, 2, 3]
    assert read_metrics(run_dir)[0]["num_params"] > 0
