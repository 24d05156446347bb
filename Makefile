# The single entry point. `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/imgpipe/v1/*.proto)

.PHONY: all venv gen lock run test lint policy policy-venv audit bench clean

all: lint policy test

# Everything from requirements-dev.lock (the runtime lock's versions plus the dev tools,
# pinned with their hashes: `make lock`), so nothing is resolved at install; then the two
# packages themselves without dependencies, built by the locked setuptools. Editable in
# setuptools' strict mode: a tree of links that mypy reads like an installed package (the
# lenient mode's import hook is invisible to type checkers). A module added or removed
# needs a reinstall, hence the package folders among the prerequisites.
$(STAMP): pyproject.toml requirements-dev.lock devstack/pyproject.toml src/imgpipe \
    src/imgpipe/v1 services/ingest services/ingest/migrations services/ingest/web \
    services/processor shared devstack devstack/bench
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation \
	  --config-settings editable_mode=strict -e . -e ./devstack
	touch $(STAMP)

venv: $(STAMP)

# Generated code is committed (src/imgpipe/v1/); tests/integration/test_protos.py fails when
# it drifts.
gen: $(STAMP)
	$(PY) -m devstack.protogen

# The dependencies pinned with their hashes, from pyproject.toml's ranges:
# requirements.lock, the runtime ones, which the image installs; requirements-dev.lock,
# the same versions plus the dev extra, which `make venv` installs; requirements-policy.lock,
# checkov's (requirements-policy.in). tests/unit/test_lock_file.py fails when they drift.
# Newest versions within the ranges: `make lock UPGRADE=--upgrade`.
PIP_COMPILE := $(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
  --no-emit-find-links --no-emit-index-url $(UPGRADE)

lock: $(STAMP)
	$(PIP_COMPILE) --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra dev --constraint requirements.lock \
	  --output-file requirements-dev.lock pyproject.toml
	$(PIP_COMPILE) --output-file requirements-policy.lock requirements-policy.in

run: $(STAMP)
	$(PY) -m devstack.run

# Unit and integration tests on four workers (pytest-xdist) on two cores: most of them
# wait on processes, servers and the network, not the CPU; tests that share a costly module
# fixture are kept on one worker (`xdist_group`). Then the end-to-end tests one at a time:
# the fault tests' short leases and deadlines are about the services, not a busy machine.
# `make test TEST_WORKERS=0` runs the first part in one process too.
TEST_WORKERS ?= 4

test: $(STAMP)
	status=0; \
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup tests/unit tests/integration || status=1; \
	$(VENV)/bin/pytest tests/e2e || status=1; \
	exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests
	$(VENV)/bin/lint-imports
	cd protos && ../$(VENV)/bin/buf lint

# checkov, the real scanner, on what gets applied: the kustomize renders of both overlays
# (the base sets no namespace; its configuration and skips: deploy/k8s/.checkov.yaml). It pins boto3, packaging and networkx
# exactly, which would downgrade the dev environment, so it has a virtualenv of its own,
# installed from requirements-policy.lock (`make lock`) without resolving anything.
POLICY_VENV     := .venv-policy
POLICY_STAMP    := $(POLICY_VENV)/.installed-stamp
K8S_OVERLAYS    := dev prod

$(POLICY_STAMP): requirements-policy.lock
	test -x $(POLICY_VENV)/bin/python || $(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install --quiet --no-deps --require-hashes \
	  -r requirements-policy.lock
	touch $(POLICY_STAMP)

policy-venv: $(POLICY_STAMP)

policy: $(POLICY_STAMP)
	rm -rf build/policy && mkdir -p build/policy
	for overlay in $(K8S_OVERLAYS); do \
	  kubectl kustomize deploy/k8s/overlays/$$overlay > build/policy/$$overlay.yaml || exit 1; \
	done
	$(POLICY_VENV)/bin/checkov --config-file deploy/k8s/.checkov.yaml --directory build/policy

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
	rm -rf $(VENV) $(POLICY_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
