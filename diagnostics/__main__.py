"""Entry point of the dynamics studies: `python -m diagnostics study=<name> [key=value ...]`.

Composes conf/diagnose.yaml (schema `DiagnoseConfig`, study group conf/study/, schemas stored by
`diagnostics.registry.register_configs`), converts it once to typed dataclasses, looks the study
up in `diagnostics.registry.STUDIES` and hands it to `diagnostics.driver.drive` with Hydra's
output directory (outputs/diagnostics/<study>/<time>, or multirun/diagnostics/<time>/<num>_<study>
with -m). A bad command line (unknown key, wrong type, missing study) is reported as one line
`error: ...` with exit status 2 before anything runs; a study's own exit code (e.g. 1 when a
validation row fails) becomes the process's.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diagnostics.registry import register_configs, run_study
from runtime.cli import hydra_cli
from runtime.errors import exit_on_user_error

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="diagnose")
def main(dict_cfg: DictConfig) -> None:
    """Hydra task: typed config -> study; exits with the study's code when non-zero."""
    code = 0
    with exit_on_user_error():
        cfg = OmegaConf.to_object(dict_cfg)
        code = run_study(cfg, Path(HydraConfig.get().runtime.output_dir))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    hydra_cli("diagnose", main)
