"""launch/*.sh: one script per published recipe; every dry-run prints the exact command it runs.

Test hypothesis: each script builds `torchrun --standalone --nproc-per-node 2 pretrain.py
experiment=<its recipe> run_dir=<one fixed dir>` plus the user's overrides verbatim (or the
SLURM multirun with a fixed sweep dir), prints it shell-quoted and exits without running anything
under --dry-run / DRY_RUN=1; and the printed pretrain.py arguments compose into that recipe.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from tests.integration.helpers import REPO, compose_pretrain

SCRIPTS = sorted(p.stem for p in (REPO / "launch").glob("*.sh") if p.name not in ("common.sh", "env.sh", "augment_sweep.sh"))  # recipes
STAMP = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    """The command `launch/<script>.sh args` would run, as an argv list; asserts it ran nothing."""
    proc = subprocess.run(
        ["bash", str(REPO / "launch" / f"{script}.sh"), *args], cwd="/", capture_output=True, text=True, timeout=30,
        env={k: v for k, v in {**os.environ, **env}.items() if k not in ("NPROC", "RUN_DIR", "SLURM", "DRY_RUN") or k in env},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return shlex.split(lines[0])


def pretrain_args(argv: list[str]) -> list[str]:
    return argv[argv.index("pretrain.py") + 1:]


def test_one_script_per_published_recipe():
    assert SCRIPTS == ["hrm_maze", "hrm_sudoku", "trm_maze", "trm_sudoku_att", "trm_sudoku_mlp"]
    for name in SCRIPTS:
        path = REPO / "launch" / f"{name}.sh"
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert (REPO / "conf" / "experiment" / f"{name}.yaml").is_file()
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_prints_the_torchrun_command(script):
    argv = dry_run(script, "--dry-run")
    assert argv[:7] == [".venv/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "pretrain.py"]
    assert argv[7] == f"experiment={script}"
    assert re.fullmatch(rf"run_dir=outputs/train/{script}/{STAMP}", argv[8]), argv[8]
    assert len(argv) == 9
    cfg = compose_pretrain(pretrain_args(argv))
    assert cfg.experiment_name == script and cfg.launcher.expected_world_size == 2 and cfg.run_dir == argv[8].split("=", 1)[1]


@pytest.mark.parametrize("script", SCRIPTS)
def test_overrides_pass_through_verbatim_and_compose(script):
    """Shell metacharacters and spaces survive (the printed line is shell-quoted), --dry-run may
    come anywhere, and DRY_RUN=1 is the same switch."""
    extra = ["augment=multi_perturbed_ce", "logger.mode=offline", "logger.name='a b; c'", "logger.tags=[x,y]"]
    argv = dry_run(script, extra[0], "--dry-run", *extra[1:])
    assert pretrain_args(argv)[2:] == extra
    again = dry_run(script, *extra, DRY_RUN="1")
    assert again[:8] + again[9:] == argv[:8] + argv[9:]  # all but the run_dir's timestamp
    cfg = compose_pretrain(pretrain_args(argv))
    assert (cfg.augment.mode, cfg.logger.name, cfg.logger.tags) == ("multi_perturbed_ce", "a b; c", ["x", "y"])


def test_environment_sets_processes_run_dir_and_python():
    argv = dry_run("trm_maze", "resume=auto", "--dry-run", NPROC="4", RUN_DIR="/runs/maze one", PYTHON="/opt/py/bin/python")
    assert argv == ["/opt/py/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "pretrain.py",
                    "experiment=trm_maze", "run_dir=/runs/maze one", "resume=auto"]


@pytest.mark.parametrize("script", ["hrm_sudoku", "trm_sudoku_mlp"])
def test_slurm_dry_run_is_a_submitit_multirun_with_a_fixed_sweep_dir(script):
    argv = dry_run(script, "hydra.launcher.partition=gpu", "--dry-run", SLURM="1")
    assert argv[:5] == [".venv/bin/python", "pretrain.py", "-m", "launcher=slurm", f"experiment={script}"]
    assert re.fullmatch(rf"hydra.sweep.dir=outputs/multirun/{script}/{STAMP}", argv[5]), argv[5]
    assert argv[6:] == ["hydra.launcher.partition=gpu"]
    cfg = compose_pretrain([a for a in argv[3:] if not a.startswith("hydra.")])
    assert cfg.launcher.from_slurm and cfg.resume == "auto"
    assert dry_run(script, "--dry-run", SLURM="1", RUN_DIR="/scratch/x")[5] == "hydra.sweep.dir=/scratch/x"


def test_common_sh_alone_explains_itself():
    proc = subprocess.run(["bash", str(REPO / "launch" / "common.sh")], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "run one of the recipe scripts" in proc.stderr
