# Two commands do everything on a fresh machine with Python 3.11+, make and a compiler:
#   make demo   - simulator + embedded PostgreSQL: migrate, backfill 30 days, print a report
#   make test   - lint, type checks and the whole test suite (real PostgreSQL, real HTTP)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | $(PYTHON) -c "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:12])")

.PHONY: demo test lint bench explore install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tcxc-etl demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -n 2 --cov --cov-report=term:skip-covered

bench: $(STAMP)
	$(BIN)/python bench/load_bench.py

# New random examples for the property tests (make test runs the same ones every time).
explore: $(STAMP)
	HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest tests/test_pagination.py \
		tests/test_normalize.py tests/test_payload.py tests/test_windows.py tests/test_passes.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
