"""Entry point of the dynamics studies: `python -m diagnostics study=<name> [key=value ...]`.

Composes conf/diagnose.yaml (schema `DiagnoseConfig`, study group conf/study/), converts it once
to typed dataclasses and calls the study's runner with Hydra's output directory
(outputs/diagnostics/<study>/<time>, or multirun/diagnostics/<time>/<num>_<study> with -m).
A bad command line (unknown key, wrong type, missing study) is reported as one line
`error: ...` with exit status 2 before anything runs; a study's own exit code (e.g. 1 when a
validation row fails) becomes the process's.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diagnostics.basin import run_basin
from diagnostics.config import DiagnoseConfig
from diagnostics.displacement import run_displacement
from diagnostics.extended import run_extended
from diagnostics.spectrum import run_spectrum
from diagnostics.stats import run_stats
from diagnostics.validate import run_validate
from runtime.cli import hydra_cli
from runtime.errors import ConfigError, exit_on_user_error

# study name -> runner(cfg, out_dir) -> exit code
STUDIES: dict[str, Callable[[DiagnoseConfig, Path], int]] = {
    "spectrum": run_spectrum,
    "displacement": run_displacement,
    "stats": run_stats,
    "extended": run_extended,
    "basin": run_basin,
    "validate": run_validate,
}


def run_study(cfg: DiagnoseConfig, out_dir: Path) -> int:
    """Dispatch to the runner of `cfg.study.name`; returns its exit code."""
    runner = STUDIES.get(cfg.study.name)
    if runner is None:
        raise ConfigError(f"study {cfg.study.name!r} has no runner; available: {', '.join(STUDIES)}")
    return runner(cfg, out_dir)


@hydra.main(version_base="1.3", config_path="../conf", config_name="diagnose")
def main(dict_cfg: DictConfig) -> None:
    """Hydra task: typed config -> study runner; exits with the runner's code when non-zero."""
    code = 0
    with exit_on_user_error():
        cfg = OmegaConf.to_object(dict_cfg)
        code = run_study(cfg, Path(HydraConfig.get().runtime.output_dir))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    hydra_cli("diagnose", main)
