# `make demo` and `make test` each create .venv if missing and install mmedge from this folder.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmedge run

test: $(STAMP)
	$(BIN)/ruff check src cli tests benchmarks
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/eps.py
	$(BIN)/python benchmarks/robustness.py

clean:
	rm -rf $(VENV) .mmedge
