# ae-anomaly: `make demo` runs the pipeline, `make test` runs the tests; both set up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup demo test test-fast lint bench clean

help:
	@echo "make demo   - set up, then run the whole pipeline on generated data"
	@echo "make test   - set up, then run the whole test suite (starts a throwaway PostgreSQL;"
	@echo "              installs it with apt-get when missing and run as root)"
	@echo "make lint   - ruff check"
	@echo "make bench  - run the benchmarks on ../shared/data and rewrite docs/benchmarks.md"
	@echo "make clean  - remove the state folder .ae_anomaly (keeps the virtualenv)"

# torch first, from the CPU build pinned in pyproject.toml, so pip never resolves a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import torch, ae_anomaly, ae_anomaly_flows, prefect, mlflow; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ae-anomaly demo --config configs/demo.yaml

test: $(STAMP)
	bash scripts/ensure_chromium.sh
	bash scripts/run_tests.sh

test-fast: $(STAMP)
	bash scripts/run_tests.sh -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check ae_anomaly flows tests

bench: $(STAMP)
	bash scripts/bench.sh

clean:
	rm -rf .ae_anomaly
