# Sourced by the recipe scripts in this folder; expects EXPERIMENT and the script's "$@".
# Builds one torchrun command (one machine, NPROC GPUs) or, with SLURM=1, one Hydra multirun
# through the submitit launcher, then runs it, or only prints it with DRY_RUN=1 / --dry-run.
#   NPROC     processes (GPUs) per node, default 2
#   RUN_DIR   run directory (default outputs/train/$EXPERIMENT/<date>); every rank gets the same
#             path, and an existing one can be continued with the override resume=auto. With
#             SLURM=1 it is the sweep directory (default outputs/multirun/$EXPERIMENT/<date>), job N
#             runs in RUN_DIR/N, and a requeued job finds its checkpoints there again
#   PYTHON    interpreter, default .venv/bin/python if present, else python3
set -euo pipefail
: "${EXPERIMENT:?is not set: run one of the recipe scripts in launch/, which source this file}"

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
NPROC="${NPROC:-2}"
STAMP="$(date +%Y-%m-%d_%H-%M-%S)"
split_args "$@"

if [[ "${SLURM:-0}" == "1" ]]; then
  # The sweep dir is fixed here, not by ${now:} in each task (which a requeued job would redo).
  RUN_DIR="${RUN_DIR:-outputs/multirun/${EXPERIMENT}/${STAMP}}"
  cmd=("$PYTHON" pretrain.py -m launcher=slurm "experiment=$EXPERIMENT" "hydra.sweep.dir=$RUN_DIR"
       ${overrides[@]+"${overrides[@]}"})
else
  RUN_DIR="${RUN_DIR:-outputs/train/${EXPERIMENT}/${STAMP}}"
  # One OpenMP thread pool per rank sharing the node's cores.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
  cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" pretrain.py
       "experiment=$EXPERIMENT" "run_dir=$RUN_DIR" ${overrides[@]+"${overrides[@]}"})
fi

if [[ "$DRY_RUN" == "1" ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
exec "${cmd[@]}"
