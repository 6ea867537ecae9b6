"""benchmarks/gpu_check.sh and its Python checks, on the CPU (the GPU run itself needs CUDA).

Test hypothesis: every check is a working entry that prints exactly one result line starting
with OK, on a CPU with `--small` models (the same code paths as on a GPU but for the device, the
dtype and the sizes), and the shell script stops with one clear line and exit status 2 where
there is no CUDA. Each check runs in its own interpreter, as the script runs it (nccl_init sets
torchrun's environment variables).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

CHECKS = [
    ("parity", []),
    ("nccl_init", []),
    ("recipe_step", []),
    pytest.param("compiled_aug", ["--backend", "eager"], marks=pytest.mark.slow),
    pytest.param("eval", ["--backend", "eager"], marks=pytest.mark.slow),
]


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "WANDB_MODE": "disabled"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("check, extra", CHECKS)
def test_check_runs_on_cpu(check, extra):
    proc = _run([sys.executable, "benchmarks/gpu_check.py", check, "--device", "cpu", "--small", *extra])
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("OK  ", "FAIL"))]
    assert proc.returncode == 0 and len(lines) == 1 and lines[0].startswith(f"OK   {check}"), proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA message is for machines without a GPU")
def test_script_without_cuda_says_so():
    proc = _run(["bash", "benchmarks/gpu_check.sh"], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("gpu_check: no CUDA device here") and proc.stdout == ""
