#!/usr/bin/env bash
# GPU checks before a real launch (issue 14 part 6): one line per check, about 7 minutes on one GPU.
# Never part of `make test`. Each check is an entry of benchmarks/gpu_check.py (they also run on a
# CPU with --small, which is what tests/test_gpu_check.py does); full logs go to $LOG/<check>.log.
#   bash benchmarks/gpu_check.sh            (from the repository root or anywhere)
# Exit status: 0 all passed, 1 some check failed or timed out, 2 no CUDA here.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOG=${LOG:-outputs/gpu_check}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False with $PY); run it on a GPU machine" >&2
  exit 2
fi
mkdir -p "$LOG"
"$PY" -c "import torch; print(f'gpu_check: torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}')"

status=0
check() {  # check NAME SECONDS: run one check under a time limit and print its result line
  local name=$1 limit=$2 line
  timeout "$limit" "$PY" benchmarks/gpu_check.py "$name" > "$LOG/$name.log" 2>&1 || status=1
  line=$(grep -E '^(OK  |FAIL) ' "$LOG/$name.log" | tail -n 1)
  echo "${line:-FAIL $name         no result within $limit s (see $LOG/$name.log)}"
}
check parity 45        # fp32 / bf16 forward of the official fixtures against their predictions
check nccl_init 45     # 1-process nccl group, device all-reduce, CPU-group gather
check recipe_step 90   # tokens/s of one Sudoku-recipe training step (bf16, batch 384)
check eval 120         # evaluation examples/s, eager and compiled
check compiled_aug 120 # compiled training with augmentation: recompiles and graph breaks after warm-up
exit $status
