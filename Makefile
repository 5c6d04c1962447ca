# Two commands: `make demo` (set up + demo retrain) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup demo test lint clean-state

setup: $(STAMP)

# torch first: the pinned CPU wheel; a bare `torch` requirement pulls a multi-GB CUDA build.
# --no-compile: Python compiles what is imported when it is first imported, instead of pip
# compiling every module of torch, transformers, mlflow... up front (a minute of CI).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/embedloop demo
	$(BIN)/embedloop status
	$(BIN)/embedloop search "drop rows with missing values" -k 5

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src flows tasks tests bench

clean-state:
	rm -rf .embedloop mlruns/mlflow.db mlruns/artifacts demo-data
