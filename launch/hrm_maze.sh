#!/usr/bin/env bash
# HRM on Maze-Hard 30x30 (official recipe; paper 74.5% exact) on one machine with 2 GPUs (2x A6000).
#   launch/hrm_maze.sh [hydra overrides...]       e.g. augment=multi_perturbed_ce logger.mode=offline
#   launch/hrm_maze.sh --dry-run                  print the exact command (or DRY_RUN=1)
#   SLURM=1 launch/hrm_maze.sh hydra.launcher.partition=gpu    submit via Hydra's submitit launcher
#   RUN_DIR=outputs/train/hrm_maze/<date> launch/hrm_maze.sh resume=auto     continue a run
EXPERIMENT=hrm_maze
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
