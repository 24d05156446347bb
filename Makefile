# The single entry point. `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/imgpipe/v1/*.proto)

.PHONY: all venv gen run test lint audit bench clean

all: lint test

# Editable in setuptools' strict mode: a tree of links that mypy reads like an installed
# package (the lenient mode's import hook is invisible to type checkers). A module added
# or removed needs a reinstall, hence the package folders among the prerequisites.
$(STAMP): pyproject.toml devstack/pyproject.toml src/imgpipe src/imgpipe/v1 services/ingest \
    services/ingest/migrations services/processor shared devstack devstack/bench
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=strict -e '.[dev]' -e ./devstack
	touch $(STAMP)

venv: $(STAMP)

# Generated code is committed (src/imgpipe/v1/); tests/test_protos.py fails when it drifts.
gen: $(STAMP)
	$(PY) -m devstack.protogen

run: $(STAMP)
	$(PY) -m devstack.run

test: $(STAMP)
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	cd protos && ../$(VENV)/bin/buf lint

# Known vulnerabilities in the installed packages, by pip-audit. Where its advisory
# service cannot be reached, pip-audit checks nothing and calls every package skipped;
# --strict makes that a failure, so this target never passes without having checked.
audit: $(STAMP)
	$(VENV)/bin/pip-audit --local --strict --skip-editable --progress-spinner off || { \
	  echo "make audit: FAILED: a known vulnerability above, or pip-audit could not check" \
	    "every installed package (its advisory service must be reachable)" >&2; exit 1; }

bench: $(STAMP)
	$(PY) -m devstack.bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
