#!/usr/bin/env bash
# TRM-MLP on Sudoku-Extreme 1k (official recipe; paper 87.4% exact) on one machine with 2 GPUs (2x A6000).
#   launch/trm_sudoku_mlp.sh [hydra overrides...]       e.g. augment=multi_perturbed_ce logger.mode=offline
#   launch/trm_sudoku_mlp.sh --dry-run                  print the exact command (or DRY_RUN=1)
#   SLURM=1 launch/trm_sudoku_mlp.sh hydra.launcher.partition=gpu    submit via Hydra's submitit launcher
#   RUN_DIR=outputs/train/trm_sudoku_mlp/<date> launch/trm_sudoku_mlp.sh resume=auto     continue a run
EXPERIMENT=trm_sudoku_mlp
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
