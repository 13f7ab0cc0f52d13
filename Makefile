# Conveyor — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: run test lint typecheck bench clean venv browser postgres compiled clean-compiled

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; it never
# downloads a browser of its own). Installed with apt-get when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

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

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

browser: $(CHROMIUM)

## make postgres: start the local PostgreSQL if it is installed but not running (the
## PostgreSQL tests need CONVEYOR_TEST_POSTGRES=postgresql://...; they skip without it).
## Never fails the build: without a server those tests skip.
postgres:
	@pg_isready -q -h 127.0.0.1 2>/dev/null || $(SUDO) service postgresql start >/dev/null 2>&1 \
		|| echo "PostgreSQL is not running here: the PostgreSQL tests will skip"

## make test: the whole suite (installs Chromium for the browser tests if it is missing)
test: $(STAMP) $(CHROMIUM) postgres
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check conveyor tests
	$(BIN)/ruff format --check conveyor tests

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/conveyor bench

## make compiled: the hot modules (conveyor/_compiled.py MODULES) compiled with mypyc, in
## place next to their .py files, which Python then imports first (needs gcc and the
## Python headers; ~1 minute). Opt-in: the install and `make test` stay pure Python.
## make clean-compiled removes the build, and the .py files run again.
compiled: $(STAMP)
	$(BIN)/python scripts/build_compiled.py

clean-compiled:
	$(PYTHON) scripts/build_compiled.py --clean

clean: clean-compiled
	rm -rf $(VENV) .conveyor build *.egg-info
