#!/usr/bin/env bash
# TRM with attention on Maze-Hard 30x30 (official recipe; paper 85.3% exact) on one machine with 2 GPUs (2x A6000).
#   launch/trm_maze.sh [hydra overrides...]       e.g. augment=multi_perturbed_ce logger.mode=offline
#   launch/trm_maze.sh --dry-run                  print the exact command (or DRY_RUN=1)
#   SLURM=1 launch/trm_maze.sh hydra.launcher.partition=gpu    submit via Hydra's submitit launcher
#   RUN_DIR=outputs/train/trm_maze/<date> launch/trm_maze.sh resume=auto     continue a run
EXPERIMENT=trm_maze
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
