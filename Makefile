# efficientllm: `make run` (set up + run the default pipeline) and `make test` (set up + tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin

# Measured processes need PASSIVE OpenMP waiting (libgomp spin makes CPU timings swing 1-8x);
# nothing phones home; Prefect state stays inside the project.
export OMP_WAIT_POLICY := PASSIVE
export TOKENIZERS_PARALLELISM := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PATH := $(BIN):$(PATH)

.PHONY: run test test-fast lint bench clean-venv

$(VENV)/.installed: pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	# CPU set-up path: the CPU torch build first, so nothing pulls a multi-GB CUDA wheel.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -r requirements/cpu.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

run: $(VENV)/.installed
	$(BIN)/dvc repro
	@echo "report: $(CURDIR)/reports/index.md"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .

bench: $(VENV)/.installed
	$(BIN)/python bench/harness_overhead.py

clean-venv:
	rm -rf $(VENV)
