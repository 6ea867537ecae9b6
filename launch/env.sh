# Sourced by the scripts in this folder: moves to the repository root and picks the interpreter
# (PYTHON, default .venv/bin/python if present, else python3).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# split_args "$@": `--dry-run` sets DRY_RUN=1 (DRY_RUN may also come from the environment); every
# other argument is kept, in order, in the array `overrides` (Hydra overrides).
split_args() {
  DRY_RUN="${DRY_RUN:-0}"
  overrides=()
  local arg
  for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then DRY_RUN=1; else overrides+=("$arg"); fi
  done
}
