# Two commands on a fresh machine:  `make demo` (set up + tiny end-to-end run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline

.PHONY: setup test test-full demo clean

setup: $(VENV)/.installed

# torch is installed first, pinned, so no other requirement can pull a different (CUDA) build.
# On a machine with an NVIDIA driver, adam-atan2 is built against that torch (--no-build-isolation)
# so its fused CUDA kernel exists; elsewhere its plain build has no kernel and
# reasoning_core.optim uses the pure-torch AdamATan2 (same update rule).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt setuptools wheel
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q -c constraints.txt --no-build-isolation adam-atan2==0.0.3 \
	  || echo "adam-atan2: fused CUDA kernel not built; the pure-torch AdamATan2 is used"; fi
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -m "not slow and not gpu" -q

test-full: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) launch/demo.py

clean:
	rm -rf $(VENV) outputs
