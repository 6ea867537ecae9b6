# Two commands on a fresh machine:  `make demo` (set up + tiny end-to-end run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline

.PHONY: setup test test-full demo clean

setup: $(VENV)/.installed

# torch is installed first, pinned, so no other requirement can pull a different (CUDA) build.
# adam-atan2 builds against that torch (--no-build-isolation): its CUDA kernel is compiled where
# nvcc exists and skipped elsewhere, and reasoning_core.optim falls back to pure torch.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt setuptools wheel
	$(PY) -m pip install -q -c constraints.txt --no-build-isolation adam-atan2==0.0.3
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -m "not slow and not gpu" -q

test-full: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m launch.demo

clean:
	rm -rf $(VENV) outputs
