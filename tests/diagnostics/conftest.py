"""Fixtures of the diagnostics tests: the device grid of the estimator tests (cpu always, cuda
when present, marked `gpu`), and the study schemas stored in Hydra's ConfigStore, so that tests
can compose conf/diagnose.yaml as `python -m diagnostics` does."""
from __future__ import annotations

import pytest
import torch

from diagnostics.registry import register_configs

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session", autouse=True)
def study_schemas() -> None:
    """`register_configs()`: the schemas conf/diagnose.yaml and conf/study/*.yaml extend."""
    register_configs()
