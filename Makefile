# symbiont — every chore is one command.  `make demo` and `make test` are the quick start.
# Installs come from the lock files in requirements/ (docs/installing.md): `make demo` only
# what the demo runs (requirements/demo.lock), `make test` the tools and tests as well
# (requirements/dev.lock).  `make lock` writes them again after pyproject.toml changes.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
UV_VERSION ?= 0.13.9

DEMO_LOCK := requirements/demo.lock
DEV_LOCK := requirements/dev.lock
DEMO_STAMP := $(VENV)/.demo-stamp
DEV_STAMP := $(VENV)/.dev-stamp

.PHONY: venv venv-dev demo test test-deps lint fmt bench lock clean

$(BIN)/python:
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "symbiont needs Python 3.11+"'
	@$(PY) -c 'import ensurepip' 2>/dev/null || { echo "installing python3-venv"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The pinned, hashed set first; then symbiont itself, editable, without resolving anything.
$(DEMO_STAMP): $(DEMO_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r $(DEMO_LOCK)
	$(BIN)/pip install -qq --no-deps -e .
	@touch $@

$(DEV_STAMP): $(DEV_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install -qq --no-deps -e .
	@touch $@

venv: $(DEMO_STAMP)

venv-dev: $(DEV_STAMP)

demo: venv
	$(BIN)/symbiont demo

lint: venv-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: venv-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-deps:
	@bash scripts/test-deps.sh

test: test-deps lint
	$(BIN)/pytest

bench: venv-dev
	$(BIN)/python -m benchmarks.run

# requirements/*.lock from pyproject.toml (UPGRADE=1: the newest versions allowed).
lock: | $(BIN)/python
	$(BIN)/pip install -q 'uv==$(UV_VERSION)'
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
