# Everything runs inside a virtual environment this Makefile creates.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SRC    := worker tests $(wildcard benchmarks/*.py) docs/hooks.py

.PHONY: install demo test test-fast lint docs format bench bench-scale chaos lock clean

# constraints.txt is the lock file: the versions CI, the demo and the image run with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/adjustments demo

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy
	MYPYPATH=build/src $(BIN)/mypy --strict tests benchmarks docs/hooks.py

# Tests, benchmarks and the docs import the package as `adjustments` (its folder is worker/):
# mypy and mkdocstrings find it through a link of that name, as setuptools' editable finder
# is invisible to them.
build/src/adjustments:
	mkdir -p build/src && ln -sfn ../../worker build/src/adjustments

lint: build/src/adjustments

# The documentation site (MkDocs, Material theme, mkdocstrings) into build/site; strict: a
# broken link or anchor, or a documented object without a docstring, fails it.
docs: $(STAMP) build/src/adjustments
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff format $(SRC)
	$(BIN)/ruff check --fix $(SRC)

# Most tests wait on real processes (Redis, workers, the sandbox): three at a time (pytest-xdist)
# keep a 2-core machine busy and make test under five minutes.
PYTEST_JOBS ?= 3

test: lint docs
	$(BIN)/pytest -q -n $(PYTEST_JOBS) --durations=10

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

# The backlog scenario alone with 1,000,000 queued records (about 1 GB of Redis; minutes).
bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.bench --scale --json benchmarks/results/scale.json

# A whole deployment under traffic and a seeded nemesis, then a checker over the history:
# CHAOS_MINUTES (default 5), CHAOS_SEED (default random, printed) to replay a run.
chaos: $(STAMP)
	$(BIN)/python -m benchmarks.chaos

test-fast: $(STAMP)
	$(BIN)/pytest -q -n $(PYTEST_JOBS) -m 'not slow'

# Re-resolve every dependency from pyproject.toml in a scratch environment and pin the result.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[dev]'
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --exclude adjustments; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .lock-venv build

clean:
	-[ -x $(BIN)/adjustments ] && $(BIN)/adjustments embedded stop  # the trial's shared Redis
	rm -rf $(VENV) .adjustments .pytest_cache .mypy_cache .ruff_cache
