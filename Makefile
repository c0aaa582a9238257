# The README's two commands, `make demo` and `make test` (what .ci/run calls), work as they are
# on a fresh machine: they install what they need once, with the project's own files, and say
# what they install while they do it.
#
# Which Python runs everything:
#   - `make test PYTHON=/path/to/python` (on the command line): that Python, as it is (a CI or
#     a user who manages the environment says so this way);
#   - inside an active virtual environment ($VIRTUAL_ENV) or conda environment ($CONDA_PREFIX):
#     its python;
#   - otherwise .venv/bin/python, a virtual environment made here from $(BASE_PYTHON)
#     (Debian's and Ubuntu's system Python refuse `pip install`, PEP 668). When the base Python
#     already has torch >= 2.11 (a GPU machine's system torch), the venv sees its
#     site-packages (--system-site-packages) and keeps that torch.
# A torch >= 2.11 that the chosen Python can import is kept; otherwise torch==$(TORCH_VERSION)
# is installed: the CPU build where the pip index has it (this project's machines), else the
# PyPI wheel, which on Linux is the CUDA build (several GB with its nvidia-* wheels).
# Without a GPU, choose the CPU build (~190 MB):
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The install runs again only when pyproject.toml is newer than its stamp ($(STAMP));
# `make reinstall` forces it, `rm -r .venv` starts over.

BASE_PYTHON ?= python3
TORCH_VERSION := 2.13.0
TORCH_INDEX ?=
# torch >= 2.11 importable: exit status 0
TORCH_OK := import sys, torch; v = torch.__version__.split('+')[0].split('.'); \
	sys.exit(0 if (int(v[0]), int(v[1])) >= (2, 11) else 1)

# an active virtual environment other than this project's own .venv (activated, it is local)
ACTIVE_VENV := $(filter-out $(CURDIR)/.venv,$(VIRTUAL_ENV))

ifeq ($(origin PYTHON),command line)
  ENV_NOTE := the Python given as PYTHON
else ifneq ($(ACTIVE_VENV),)
  PYTHON := $(ACTIVE_VENV)/bin/python
  ENV_NOTE := the active virtual environment $(ACTIVE_VENV)
else ifdef CONDA_PREFIX
  PYTHON := $(CONDA_PREFIX)/bin/python
  ENV_NOTE := the active conda environment $(CONDA_PREFIX)
else
  PYTHON := .venv/bin/python
  ENV_NOTE := the project's .venv
  LOCAL_VENV := .venv/bin/python
endif

ifdef LOCAL_VENV
  STAMP := .venv/.optdsl-installed
else
  STAMP := build/optdsl-installed$(subst /,_,$(shell command -v $(PYTHON)))
endif

PIP := $(PYTHON) -m pip install --disable-pip-version-check --progress-bar on
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: install reinstall demo test test-slow test-triton36 bench kernels

install: $(STAMP)

reinstall:
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory install

.venv/bin/python:
	@$(BASE_PYTHON) -c "import sys; sys.exit(sys.version_info < (3, 10))" 2>/dev/null || { \
	  echo "optdsl needs Python >= 3.10; $(BASE_PYTHON) is not (choose one: make BASE_PYTHON=python3.12)"; \
	  exit 1; }
	@if $(BASE_PYTHON) -c "$(TORCH_OK)" 2>/dev/null; then \
	  echo "==> making .venv from $(BASE_PYTHON), seeing its torch (--system-site-packages)"; \
	  $(BASE_PYTHON) -m venv --system-site-packages .venv; \
	else \
	  echo "==> making a virtual environment in .venv from $(BASE_PYTHON)"; \
	  $(BASE_PYTHON) -m venv .venv; \
	fi || { rm -rf .venv; \
	  echo "could not make .venv: on Debian/Ubuntu install python3-venv (apt install python3-venv)"; \
	  exit 1; }

$(STAMP): pyproject.toml | $(LOCAL_VENV)
	@echo "==> installing into $(ENV_NOTE) ($(PYTHON)); this happens once"
	@if $(PYTHON) -c "$(TORCH_OK)" 2>/dev/null; then \
	  echo "==> keeping torch $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "==> installing torch==$(TORCH_VERSION) (CPU build ~190 MB; from PyPI on Linux: the CUDA build, several GB)"; \
	  $(PIP) "torch==$(TORCH_VERSION)" $(TORCH_FROM); \
	fi
	@echo "==> installing optdsl (editable) with numpy, lark, triton (Linux x86-64; ~150 MB) and the dev and demo extras (pytest, hypothesis, scikit-learn, matplotlib)"
	$(PIP) -e ".[dev,demo]"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)
	@echo "==> installed; later runs skip this until pyproject.toml changes"

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
	tests/test_nan_semantics.py tests/test_device_step.py tests/test_fixtures.py \
	tests/test_matrix.py

test-triton36: install
	@test -x $(TRITON36_VENV)/bin/python || $(PYTHON) -m venv $(TRITON36_VENV)
	@$(PYTHON) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(TRITON36_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/parent-packages.pth"
	@$(TRITON36_VENV)/bin/python -m pip install -q --disable-pip-version-check "triton==3.6.0"
	@$(TRITON36_VENV)/bin/python -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
	PYTHONPATH=$(CURDIR) $(TRITON36_VENV)/bin/python -m pytest -q -p no:cacheprovider $(TRITON36_TESTS)
