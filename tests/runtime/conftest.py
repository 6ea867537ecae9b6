"""Fixtures shared by the runtime tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def isolated_wandb(tmp_path, monkeypatch):
    """W&B folders in tmp_path (the run folder lands in tmp_path/wb/wandb), no credentials, no
    inherited mode: offline runs write locally and nothing can reach a server or prompt a login."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path
