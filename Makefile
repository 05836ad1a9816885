# Two commands for a newcomer: `make run` and `make test` (see README).
# Every install comes from uv.lock (exact versions; decision 0050): `make lock` upgrades it.

# The interpreter: CPython 3.11 (decision 0051: the CPU build of torch on these machines is cp311).
PYTHON ?= $(shell command -v python3.11)
VENV   := .venv
BIN    := $(VENV)/bin
# uv itself lives in a small venv of its own, so `uv sync` never removes it from .venv.
TOOLS  := .tools
UV_VERSION := 0.13.9
UV     := $(TOOLS)/bin/uv
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# Never download an interpreter: use the one named above, or say it is missing.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
UV_SYNC := $(UV) sync --locked --quiet --python $(PYTHON)

.PHONY: run test test-fast install bench chaos chaos-cluster lint lock clean python system-packages

run: $(STAMP)
	$(BIN)/taskmgr migrate
	$(BIN)/taskmgr topology
	$(BIN)/taskmgr up

# The slowest tests are listed at the end: the suite's 15-minute budget is watched in CI's log.
test: $(STAMP)
	$(BIN)/pytest --durations=25

# The inner loop: tests that need no broker, database or child process (under 30 s).
test-fast: $(STAMP)
	$(BIN)/pytest -m "fast and not model" -p no:cacheprovider

install: $(STAMP)

python:
	@test -n "$(PYTHON)" || { echo "make: Python 3.11 is required and python3.11 is not on PATH; install it (pyenv install 3.11 && pyenv global 3.11, or apt-get install python3.11 python3.11-venv) and run make again" >&2; exit 1; }

$(UV): | python
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

$(STAMP): pyproject.toml uv.lock | $(UV) system-packages
	$(UV_SYNC) --extra test
	touch $(STAMP)

# Debian tools: for the preprocess worker, Tesseract (OCR, with Chinese and English) and
# antiword (Word 97); for the console's browser tests, chromium and chromium-driver. Installed
# when missing and we may (root with apt-get); otherwise one line says what to install, and
# documents that need them fail with `missing_tool` (the browser tests skip, or fail under CI).
SYSTEM_PACKAGES := antiword tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim tesseract-ocr-chi-tra \
	chromium chromium-driver
system-packages:
	@if command -v antiword >/dev/null && tesseract --list-langs 2>/dev/null | grep -q chi_tra \
	  && command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SYSTEM_PACKAGES) (OCR, legacy Word, the console's browser tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "note: OCR, .doc documents and the console's browser tests need: sudo apt-get install $(SYSTEM_PACKAGES)"; fi

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos

# The same soak on a three-node RabbitMQ cluster of its own, with replicas (about 5 minutes).
chaos-cluster: $(STAMP)
	$(BIN)/python -m tests.chaos_cluster

# The whole comparison in one run (under 10 minutes): prints the table, writes BENCHMARKS.md.
bench: $(BENCH_STAMP)
	@command -v hey >/dev/null || echo "note: hey is not installed (apt-get install hey); the aiohttp load generator takes more of the CPU it measures"
	$(BIN)/python -m bench

$(BENCH_STAMP): pyproject.toml uv.lock $(STAMP)
	$(UV_SYNC) --extra test --extra bench
	touch $(BENCH_STAMP)

# What tests/test_lint.py and tests/test_typing.py check, on its own (ruff and mypy come with the test extra).
lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy --strict shared
	$(BIN)/mypy --strict services

# Re-resolve every dependency within pyproject.toml's ranges and rewrite uv.lock.
lock: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache
