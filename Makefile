# The two commands of the README. Both install what they need with the project's own files.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q --disable-pip-version-check
# torch==2.13.0 is the CPU build these machines carry on disk; any torch >= 2.11 already
# installed (a GPU machine's) is kept as it is.
TORCH_CPU := torch==2.13.0

.PHONY: install demo test test-slow test-triton36 bench kernels

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

# The interpreter suites under Triton 3.6 (the GPU machines' version; CI installs the newest):
# a venv of its own with triton==3.6.0 that sees this Python's packages (torch and the rest)
# through a .pth file. Opt-in; run it before closing work on the Triton back end.
TRITON36_VENV ?= .venv-triton36
TRITON36_TESTS := tests/test_triton_interp.py tests/test_mixed_precision.py \
	tests/test_nan_semantics.py tests/test_device_step.py tests/test_fixtures.py

test-triton36: install
	@test -x $(TRITON36_VENV)/bin/python || $(PYTHON) -m venv $(TRITON36_VENV)
	@$(PYTHON) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(TRITON36_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/parent-packages.pth"
	@$(TRITON36_VENV)/bin/python -m pip install -q --disable-pip-version-check "triton==3.6.0"
	@$(TRITON36_VENV)/bin/python -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
	PYTHONPATH=$(CURDIR) $(TRITON36_VENV)/bin/python -m pytest -q -p no:cacheprovider $(TRITON36_TESTS)
