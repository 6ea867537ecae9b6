"""Train a TRM or HRM puzzle solver (official recipes, CPU or GPU, one process or torchrun).

    python pretrain.py experiment=sudoku_tiny                                # CPU, ~5 minutes
    torchrun --nproc-per-node 2 pretrain.py experiment=trm_sudoku_mlp        # see launch/
    python pretrain.py experiment=trm_sudoku_mlp augment=multi_perturbed_ce  # trajectory augmentation
    python pretrain.py experiment=sudoku_tiny run_dir=R resume=auto          # continue the run in R
    python pretrain.py -m launcher=slurm experiment=hrm_sudoku               # SLURM via submitit

The config is composed by Hydra from conf/pretrain.yaml (typed by training/config.py)
and converted once; the loop lives in training/loop.py. Export a checkpoint to the
official layout with `python -m training.export CKPT OUT_DIR`.
"""
from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runtime.cli import hydra_cli
from runtime.errors import exit_on_user_error
from training.config import PretrainConfig, register_configs

register_configs()


@hydra.main(config_path="conf", config_name="pretrain", version_base="1.3")
def main(dict_cfg: DictConfig) -> None:
    from training.loop import run  # noqa: PLC0415 (after Hydra has parsed the command line)

    with exit_on_user_error():
        cfg: PretrainConfig = OmegaConf.to_object(dict_cfg)
        run(cfg, hydra_dir=HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    hydra_cli("pretrain", main)
