# mipflow: `make demo` runs the demo federation, `make test` runs the tests.
# Both create what they need: a virtualenv in .venv, the pinned packages, and a
# local Airflow home under var/airflow (SQLite).

SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
             command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
             && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AIRFLOW_HOME := $(CURDIR)/var/airflow
export AIRFLOW_CONFIG := $(CURDIR)/airflow.cfg
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN := sqlite:///$(CURDIR)/var/airflow/airflow.db
PYTEST_ARGS ?=
# `make demo DEMO_ARGS=--serve` (or MIPFLOW_DEMO_SERVE=1) leaves the results pages up after the run
DEMO_ARGS ?=

.PHONY: install test test-containers images demo bench airflow-db clean results-ui

$(STAMP): requirements.txt requirements-test.txt requirements-reference.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "mipflow needs Python 3.11 or newer on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
# test references whose declared pins conflict with ours (lifelines: pandas<3), without their deps
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-reference.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

var/airflow/airflow.db: $(STAMP)
	@mkdir -p var/airflow
	$(BIN)/airflow db migrate > var/airflow/migrate.log 2>&1 || { cat var/airflow/migrate.log; exit 1; }

airflow-db: var/airflow/airflow.db

# --dist loadfile: a test file runs on one worker, in order, so its module fixtures (node services,
# Airflow) start once. (--dist loadgroup would honour xdist_group marks, but pytest-xdist 3.8 sets the
# group on Item._nodeid, which pytest 9 no longer reads: the marks were silently ignored.)
# the container federation (minutes: image build, 3 nodes and a Celery central in containers) runs on
# its own in `make test-containers`; a later -m in PYTEST_ARGS overrides the selection
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not containers" $(PYTEST_ARGS)

test-containers: install
	$(BIN)/python -m pytest -n 0 -m containers tests/integration/test_container_federation.py $(PYTEST_ARGS)

# mipflow-node and mipflow-central with podman or docker (base: the official Airflow image where it
# can be pulled, else one made from Debian's packages); MIPFLOW_VERSION tags them (default dev)
images:
	bash docker/build-images.sh

demo: install airflow-db
	$(BIN)/python -m mipflow_airflow.demo --work-dir $(CURDIR)/var/demo $(DEMO_ARGS)

results-ui: install airflow-db
	MIPFLOW_CENTRAL_HOME=$(CURDIR)/var/demo/central $(BIN)/airflow api-server --port 8080

bench: install
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)
	$(BIN)/python bench/federation.py
	$(BIN)/python bench/cox.py $(COX_BENCH_ARGS)
	$(BIN)/python bench/kmeans.py
	$(BIN)/python bench/verification.py
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/dicom.py
	$(BIN)/python bench/trigger.py

clean:
	rm -rf var .pytest_cache .hypothesis
