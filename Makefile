# Every entry point a person types. `make test` and `make run` install first when needed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= infer,train,dev
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma := ,

.PHONY: install test test-fast lint format run bench images deploy clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes; a fresh machine needs nothing but Python 3.11.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $@

test: install
	$(BIN)/python -m pytest

# Everything but the slow end-to-end tests.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check shared functions tests
	$(BIN)/ruff format --check shared functions tests

format: install
	$(BIN)/ruff check --fix shared functions tests
	$(BIN)/ruff format shared functions tests

run: install
	$(BIN)/lepton up

clean:
	rm -rf $(VENV) .lepton .pytest_cache build *.egg-info
