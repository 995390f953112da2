# detox — developer entry points (see ../shared/design/product.md, "Interfaces other tools depend on").
#
#   make setup    system packages (only the missing ones) + .venv/ with detox and the test tools
#   make run      detox serve on config/detox.toml (127.0.0.1:2525, delivers to a Maildir under var/)
#   make test     ruff + mypy + pytest (every test; the Postfix tests start a private Postfix)
#   make test-fast  ruff + mypy + the unit tests without Postfix, corpus, LibreOffice or `slow` (~2 min)
#   make lint     ruff + mypy only
#   make bench    bench/run_all.sh, when present
#   make fuzz     the fuzz test for FUZZ_SECONDS (default 60) seconds; `make test` runs it for 30 s
#   make soak     bench/soak.py: 20,000 messages into a real Postfix, faults injected (root; ~15 min)
#   make clean    remove var/, .venv/ and tool caches
#   make podman-check   build the production image with podman and smoke-test it (root, slow)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# Python >= 3.11: python3.11 when present, else python3. Resolved when the recipe runs (after system deps).
PYTHON ?= $$(command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
CONFIG ?= config/detox.toml
PYTEST_ARGS ?=
# What `make test-fast` leaves out (the markers are in pyproject.toml).
FAST_MARKERS := not (postfix or corpus or libreoffice or slow)
FUZZ_SECONDS ?= 60
SOAK_ARGS ?=

.PHONY: help setup system-deps run test test-fast lint bench fuzz soak clean podman-check

help:
	@sed -n '3,13s/^# \{0,1\}//p' Makefile

setup: $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

# Rebuilt only when pyproject.toml or constraints.txt change (or the venv is missing/broken).
$(STAMP): pyproject.toml constraints.txt | system-deps
	@if ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	    py="$(PYTHON)"; \
	    if [ -z "$$py" ]; then echo "make setup: no python3.11/python3 found" >&2; exit 1; fi; \
	    "$$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	        || { echo "make setup: $$py is older than 3.11" >&2; exit 1; }; \
	    echo "+ $$py -m venv $(VENV)"; \
	    rm -rf $(VENV); "$$py" -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

run: setup
	$(BIN)/detox serve --config $(CONFIG)

lint: setup
	@rc=0; \
	echo "+ ruff check ."; $(BIN)/ruff check . || rc=1; \
	echo "+ mypy"; $(BIN)/mypy || rc=1; \
	exit $$rc

# Runs all three even when one fails, then fails if any did.
test: setup
	@rc=0; \
	echo "+ ruff check ."; $(BIN)/ruff check . || rc=1; \
	echo "+ mypy"; $(BIN)/mypy || rc=1; \
	echo "+ pytest -q -ra $(PYTEST_ARGS)"; $(BIN)/pytest -q -ra $(PYTEST_ARGS) || rc=1; \
	exit $$rc

# The loop while editing: no root, no Postfix, no corpus, no LibreOffice. `make test` before a commit.
test-fast: setup
	@rc=0; \
	echo "+ ruff check ."; $(BIN)/ruff check . || rc=1; \
	echo "+ mypy"; $(BIN)/mypy || rc=1; \
	echo "+ pytest -q -ra -m '$(FAST_MARKERS)' tests/unit $(PYTEST_ARGS)"; \
	$(BIN)/pytest -q -ra -m '$(FAST_MARKERS)' tests/unit $(PYTEST_ARGS) || rc=1; \
	exit $$rc

bench: setup
	@if [ -f bench/run_all.sh ]; then PATH="$(CURDIR)/$(BIN):$$PATH" bash bench/run_all.sh; \
	else echo "make bench: bench/run_all.sh does not exist yet"; fi

# tests/fuzz/test_fuzz.py for longer; a finding is printed with its bytes (see tests/fuzz/target.py).
fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/pytest -q -ra -p no:cacheprovider -m fuzz tests/fuzz $(PYTEST_ARGS)

# Measures, never asserts timings; exits 1 if a message was lost. SOAK_ARGS="--messages 2000" for a short run.
soak: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" timeout --foreground -k 60 $${SOAK_TIMEOUT:-7200} \
	    $(BIN)/python bench/soak.py $(SOAK_ARGS)

podman-check:
	scripts/podman-check.sh

clean:
	rm -rf var/ $(VENV)/ .mypy_cache/ .ruff_cache/ .pytest_cache/ .hypothesis/ build/ dist/ *.egg-info/
