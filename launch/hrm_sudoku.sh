#!/usr/bin/env bash
# HRM on Sudoku-Extreme 1k (official recipe; paper 55.0% exact) on one machine with 2 GPUs (2x A6000).
#   launch/hrm_sudoku.sh [hydra overrides...]       e.g. augment=multi_perturbed_ce logger.mode=offline
#   launch/hrm_sudoku.sh --dry-run                  print the exact command (or DRY_RUN=1)
#   SLURM=1 launch/hrm_sudoku.sh hydra.launcher.partition=gpu    submit via Hydra's submitit launcher
#   RUN_DIR=outputs/train/hrm_sudoku/<date> launch/hrm_sudoku.sh resume=auto     continue a run
EXPERIMENT=hrm_sudoku
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
