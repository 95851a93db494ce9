# `make demo` and `make test` each create .venv if missing and install mmedge from this folder.
# `make test` also creates .venv-cpu with `pip install ".[cpu]"` alone (no torch, no training-data packages) and
# runs the device-side commands there.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
CPU_VENV ?= .venv-cpu
CPU_STAMP := $(CPU_VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

$(CPU_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(CPU_VENV)
	$(CPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(CPU_VENV)/bin/python -m pip install -q -c constraints.txt -e ".[cpu]"
	touch $(CPU_STAMP)

demo: $(STAMP)
	$(BIN)/mmedge run

lint: $(STAMP)
	$(BIN)/ruff check src cli tests benchmarks
	$(BIN)/lint-imports

# The whole suite, the device-side commands in the [cpu]-only virtualenv included.
test: lint $(CPU_STAMP)
	MMEDGE_CPU_PYTHON=$(abspath $(CPU_VENV))/bin/python $(BIN)/python -m pytest --durations=15

# The quick tier (no test marked slow): under two minutes.
test-fast: lint
	$(BIN)/python -m pytest -m "not slow" -x -q

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/eps.py
	$(BIN)/python benchmarks/robustness.py
	$(BIN)/python benchmarks/under_load.py

clean:
	rm -rf $(VENV) $(CPU_VENV) .mmedge
