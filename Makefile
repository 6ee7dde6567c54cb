# cdt_bayes — the two commands: `make demo` and `make test` (both create ./.venv first).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Find a Python >= 3.11 by itself: pyenv's 3.12 (the bare shim fails), python3.12, then python3.
PYTHON ?= $(shell \
  if PYENV_VERSION=3.12.1 python3.12 -c 'import sys' >/dev/null 2>&1; then echo "env PYENV_VERSION=3.12.1 python3.12"; \
  elif command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys' >/dev/null 2>&1; then echo python3.12; \
  else echo python3; fi)

.PHONY: install test test-fast demo bench docs lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q -e ".[mesh,wfdb]" --group test
	@touch $(STAMP)

# Tests run in parallel workers (pytest-xdist; WORKERS=0 runs them serially in one process), one test module
# per worker at a time (--dist loadscope), so each module-scoped fixture (e.g. the SBC run) is built once.
WORKERS ?= auto
test: install
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist loadscope tests

test-fast: install
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist loadscope -m "not slow" tests

demo: install
	$(VENV)/bin/cdt-bayes demo --out demo_out

bench: install
	$(PY) benchmarks/run.py

docs: install
	$(PY) docs/build.py

clean:
	rm -rf $(VENV) demo_out docs/_build

lint: install
	$(PY) -m ruff check cdt_bayes tests benchmarks docs

format: install
	$(PY) -m ruff format cdt_bayes tests benchmarks docs
