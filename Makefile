# Two commands for a newcomer: `make run` and `make test` (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test install bench chaos lint clean

run: $(STAMP)
	$(BIN)/taskmgr migrate
	$(BIN)/taskmgr topology
	$(BIN)/taskmgr up

test: $(STAMP)
	$(BIN)/pytest

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos

# The whole comparison in one run (under 10 minutes): prints the table, writes BENCHMARKS.md.
bench: $(BENCH_STAMP)
	@command -v hey >/dev/null || echo "note: hey is not installed (apt-get install hey); the aiohttp load generator takes more of the CPU it measures"
	$(BIN)/python -m bench

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

# What tests/test_lint.py and tests/test_typing.py check, on its own (ruff and mypy come with the test extra).
lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy --strict shared
	$(BIN)/mypy --strict services

clean:
	rm -rf $(VENV) .pytest_cache
