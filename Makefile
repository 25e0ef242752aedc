# Everything runs inside a virtual environment this Makefile creates.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/adjustments demo

lint: $(STAMP)
	$(BIN)/ruff check worker tests benchmarks
	$(BIN)/ruff format --check worker tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format worker tests benchmarks
	$(BIN)/ruff check --fix worker tests benchmarks

test: lint
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/store

clean:
	rm -rf $(VENV) .adjustments .pytest_cache .mypy_cache .ruff_cache
