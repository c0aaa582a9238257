# The two commands of the README. Both install what they need with the project's own files.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q --disable-pip-version-check
# torch==2.13.0 is the CPU build these machines carry on disk; any torch >= 2.11 already
# installed (a GPU machine's) is kept as it is.
TORCH_CPU := torch==2.13.0

.PHONY: install demo test test-slow bench kernels

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_CPU)"
	@$(PIP) -e ".[dev,demo]"

demo: install
	$(PYTHON) -m optdsl demo --out demo-out

test: install
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

bench: install
	$(PYTHON) bench/bench_cpu.py

kernels: install
	$(PYTHON) -m optdsl compile optdsl/library/*.opt -o kernels
