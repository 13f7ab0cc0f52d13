# Conveyor — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: run test lint typecheck bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## make run: a local system in the foreground (broker + 2 workers); Ctrl-C stops it
run: $(VENV)/.installed
	$(BIN)/conveyor dev

## make test: the whole suite
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check conveyor tests
	$(BIN)/ruff format --check conveyor tests

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/conveyor bench

clean:
	rm -rf $(VENV) .conveyor build *.egg-info
