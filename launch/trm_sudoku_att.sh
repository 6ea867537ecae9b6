#!/usr/bin/env bash
# TRM with attention on Sudoku-Extreme 1k (official recipe; paper 74.7% exact) on one machine with 2 GPUs (2x A6000).
#   launch/trm_sudoku_att.sh [hydra overrides...]       e.g. augment=multi_perturbed_ce logger.mode=offline
#   launch/trm_sudoku_att.sh --dry-run                  print the exact command (or DRY_RUN=1)
#   SLURM=1 launch/trm_sudoku_att.sh hydra.launcher.partition=gpu    submit via Hydra's submitit launcher
#   RUN_DIR=outputs/train/trm_sudoku_att/<date> launch/trm_sudoku_att.sh resume=auto     continue a run
EXPERIMENT=trm_sudoku_att
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
