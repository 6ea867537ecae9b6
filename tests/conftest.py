"""Shared fixtures: the official parity fixtures copied from the official implementations."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RRDYN_CACHE_DIR", tempfile.mkdtemp(prefix="rrdyn-test-cache-"))  # never the user's cache
torch.set_num_threads(min(2, torch.get_num_threads()))

import archs  # noqa: E402,F401  (registers trm and hrm)

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"
OFFICIAL_MODELS = ("trm_mlp", "trm_att", "hrm")


@pytest.fixture(params=OFFICIAL_MODELS)
def official_fixture(request) -> Path:
    """Folder with run/step_100, run/all_config.yaml, data/ and expected.npz."""
    return OFFICIAL_FIXTURES / request.param
