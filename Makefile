# Two commands on a fresh machine:  `make demo` (set up + tiny end-to-end run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline

.PHONY: setup setup-cuda test test-full demo clean

setup: $(VENV)/.installed

# torch is installed first, pinned, so no other requirement can pull a different (CUDA) build.
# Nothing here compiles: the fused adam-atan2 CUDA kernel is the optional `cuda` extra, built by
# `make setup-cuda` on a GPU box; without it the optimizer runs its pure-torch AdamATan2 path
# (same update rule). The first line says which pip settings this install runs under.
$(VENV)/.installed: pyproject.toml constraints.txt
	@if [ -n "$${PIP_NO_CACHE_DIR:-}" ]; then cache="off (PIP_NO_CACHE_DIR=$$PIP_NO_CACHE_DIR)"; else cache=on; fi; \
	  echo "setup: creating virtual environment $(VENV) with $$($(PYTHON) --version 2>&1); pip cache $$cache;" \
	    "CUDA_HOME=$${CUDA_HOME:-<unset>}; pins from constraints.txt"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@$(PY) -c "import torch; print(f'setup: done; torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
	touch $@

# GPU box only: build adam-atan2's fused kernel against the installed torch (needs nvcc + CUDA_HOME).
setup-cuda: setup
	$(PY) -m pip install -c constraints.txt setuptools wheel
	$(PY) -m pip install -c constraints.txt --no-build-isolation -e ".[cuda]"
	$(PY) -c "import adam_atan2_backend; print('setup-cuda: fused AdamATan2 kernel importable')"

test: setup
	$(PY) -m pytest -m "not slow and not gpu" -q

test-full: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m diagnostics.demo

clean:
	rm -rf $(VENV) outputs
