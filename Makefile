# The single entry point. `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/imgpipe/v1/*.proto)

.PHONY: all venv gen run test lint audit bench clean

all: lint test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Generated code is committed (imgpipe/v1/); tests/test_protos.py fails when it drifts.
gen: $(STAMP)
	$(PY) -m devstack.protogen

run: $(STAMP)
	$(PY) -m devstack.run

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
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
