# Two entry points (see README): `make bench` and `make test`; while working, `make test-fast`,
# `make lint` and `make format` (see CONTRIBUTING.md). Each creates .venv on first use: torch
# pinned first (a CPU build), then the project with its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: venv bench test test-fast lint format list gpu-check gpu-wheels clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

bench: venv
	$(PY) run_bench.py run --suite quick

list: venv
	$(PY) run_bench.py list

# the full set, as CI runs it
test: venv
	$(PY) -m pytest -rs -q

# everything but the end-to-end tests marked slow (whole suites, the package install, the
# browser, model training): a few minutes on a 2-core CPU
test-fast: venv
	$(PY) -m pytest -rs -q -m "not slow"

# ruff: the rules are in pyproject.toml; CI runs `make lint` before `make test`
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The prepared GPU check (attnbench/gpucheck.py): on a GPU machine as it is (its own Python
# with PyTorch, no network), so it installs nothing; the files go to $(GPU_CHECK_OUT) or results/.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) run_bench.py gpu-check

# The wheels the GPU machine lacks and can use (fla-core, xformers and its CUDA 12 runtime; see
# attnbench/gpuwheels.py), fetched with pip into the ignored .whl/. Run as a file, not with -m:
# the package imports torch, and this needs only pip and the package registries.
gpu-wheels:
	$(PYTHON) attnbench/gpuwheels.py download --dest .whl

clean:
	rm -rf $(VENV)
