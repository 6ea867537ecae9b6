#!/usr/bin/env bash
# What trajectory augmentation does, measured on the tiny Sudoku preset (CPU): one command trains
# every condition x seed, evaluates every checkpoint, runs the spectrum, displacement and basin
# studies on each, and collects one table of the conditions with CIs across seeds.
#   launch/augment_sweep.sh                       the whole sweep (rerun the same command to continue)
#   launch/augment_sweep.sh --dry-run             print the commands (or DRY_RUN=1)
#   SEEDS=0,1,2,3,4 SIGMAS=1e-3 launch/augment_sweep.sh
#   launch/augment_sweep.sh max_steps=1200        other arguments: Hydra overrides of every training run
#
# Conditions (Hydra multiruns of pretrain.py, experiment=sudoku_tiny, 600 steps each):
#   augment=none (sigma recorded as 0), augment=single_perturbed_ce x SIGMAS,
#   augment=multi_perturbed_ce (clean + N_PERTURBED perturbed copies) x SIGMAS; x SEEDS each.
# Then per checkpoint: evaluate.py on the 1,000 test puzzles; study=spectrum (k = 1, N_STUDY
# puzzles), study=displacement (N_STUDY), study=basin (N_BASIN puzzles, their failures restarted 3
# times at sigma 0, 0.3, 1 for 16 segments): the demo's settings. Finally
#   python -m diagnostics.collect SWEEP_DIR --by augment.mode,augment.sigma
# writes SWEEP_DIR/table.md: per condition, test exact, median lambda_1 of successes and failures,
# AUC(-lambda_1), failures settled and the hard core, each a mean over seeds with a 95% t-interval.
#
# Environment: SWEEP_DIR (default outputs/sweeps/augment; fixed, so that rerunning continues: every
# training job resumes from its checkpoints with resume=auto, a finished evaluation is skipped and a
# finished study re-summarises its shards), SEEDS (0,1,2), SIGMAS (1e-3,1e-1), N_PERTURBED (1: the
# published recipe uses 3, which makes each step of a multi run 4x dearer), N_STUDY (512), N_BASIN
# (192), PYTHON (.venv/bin/python if present), OMP_NUM_THREADS (the core count), DRY_RUN=1.
# CPU cost, measured with two 1-thread jobs sharing 2 cores (README "Trajectory augmentation"):
# about 5 min per none or single run, ~11 min per multi run (N_PERTURBED=1), ~1.3 min per
# evaluation and ~1.5 min for the three studies per checkpoint at N_STUDY=256, N_BASIN=128:
# ~2.4 h for the default 15 checkpoints with the sweep alone on the cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SWEEP_DIR="${SWEEP_DIR:-outputs/sweeps/augment}"
SEEDS="${SEEDS:-0,1,2}"
SIGMAS="${SIGMAS:-1e-3,1e-1}"
N_PERTURBED="${N_PERTURBED:-1}"
N_STUDY="${N_STUDY:-512}"
N_BASIN="${N_BASIN:-192}"
split_args "$@"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}" WANDB_MODE="${WANDB_MODE:-disabled}" HYDRA_FULL_ERROR="${HYDRA_FULL_ERROR:-0}"
SWEEP_DIR="$(realpath -m "$SWEEP_DIR")"  # absolute: studies and evaluations name checkpoints by path

run() {
  printf '$'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" != "1" ]]; then "$@"; fi
}

# 1. Training: one multirun per augmentation mode (600 steps each, no wall-time cap).
train=(pretrain.py -m experiment=sudoku_tiny max_train_seconds=null logger=none progress=false resume=auto "seed=$SEEDS"
       ${overrides[@]+"${overrides[@]}"})
run "$PYTHON" "${train[@]}" augment=none augment.sigma=0 "hydra.sweep.dir=$SWEEP_DIR/train/none"
run "$PYTHON" "${train[@]}" augment=single_perturbed_ce "augment.sigma=$SIGMAS" "hydra.sweep.dir=$SWEEP_DIR/train/single"
run "$PYTHON" "${train[@]}" augment=multi_perturbed_ce "augment.sigma=$SIGMAS" "augment.n_perturbed=$N_PERTURBED" \
  "hydra.sweep.dir=$SWEEP_DIR/train/multi"
if [[ "$DRY_RUN" == "1" ]]; then
  echo "# then evaluate.py, study=spectrum|displacement|basin on every checkpoint, and diagnostics.collect (see the header)"
  exit 0
fi

# 2. Every checkpoint: evaluate.py, then the three studies as multiruns over the checkpoints.
mapfile -t checkpoints < <(find "$SWEEP_DIR/train" -path '*/checkpoints/last.pt' | sort -V)
if [[ ${#checkpoints[@]} -eq 0 ]]; then echo "error: no checkpoints under $SWEEP_DIR/train" >&2; exit 1; fi
data="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["dataset"]["path"])' "$(dirname "$(dirname "${checkpoints[0]}")")/manifest.json")"
for ckpt in "${checkpoints[@]}"; do
  out="$(dirname "$(dirname "$ckpt")")/evaluate"
  [[ -f "$out/metrics.json" ]] || run "$PYTHON" evaluate.py "checkpoint=$ckpt" "data_path=$data" "output_dir=$out"
done
list="$(IFS=,; echo "${checkpoints[*]}")"
study=("$PYTHON" -m diagnostics -m "checkpoint=$list" "data_path=$data" seed=0 wandb.mode=disabled)
run "${study[@]}" study=spectrum "n=$N_STUDY" study.k=1 "hydra.sweep.dir=$SWEEP_DIR/studies/spectrum"
run "${study[@]}" study=displacement "n=$N_STUDY" "hydra.sweep.dir=$SWEEP_DIR/studies/displacement"
run "${study[@]}" study=basin "n=$N_BASIN" study.restarts=3 "study.sigmas=[0.0,0.3,1.0]" study.segments_basin=16 \
  "hydra.sweep.dir=$SWEEP_DIR/studies/basin"

# 3. One table.
run "$PYTHON" -m diagnostics.collect "$SWEEP_DIR" --by augment.mode,augment.sigma --out "$SWEEP_DIR/table.md" --csv "$SWEEP_DIR/table.csv"
