SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
SERVICES := deploy/local/services.sh
# Extra arguments, e.g.  make test PYTEST_ARGS='-x -k groups'   make bench BENCH_ARGS='--help'
#                        make lock LOCK_ARGS='--upgrade-package ruff'   (or --upgrade: everything)
PYTEST_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=
LOCK_ARGS ?=

# The locks, written by `make lock` (pip-compile, for CPython 3.11 like deploy/Dockerfile):
# every package pinned with its hashes, setuptools included to build the project itself.
LOCK := requirements/dev.txt
RUNTIME_LOCK := requirements/runtime.txt
# pip-compile lives in its own venv, so that it never mixes with the project's packages.
LOCK_TOOLS := $(VENV)/.lock-tools
LOCK_TOOLS_PINS := pip==26.3 pip-tools==7.7.0
PIP_COMPILE := CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_TOOLS)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --all-build-deps --strip-extras --no-emit-index-url \
	--no-emit-find-links --no-emit-trusted-host

.PHONY: help venv lock services services-stop services-status run test lint bench chaos clean

help:
	@echo "make venv             create .venv: the locked packages (requirements/dev.txt), then the project"
	@echo "make lock             refresh requirements/*.txt from pyproject.toml (LOCK_ARGS=--upgrade ...)"
	@echo "make services         start local Kafka + PostgreSQL, write .local/env"
	@echo "make services-stop    stop them"
	@echo "make services-status  show their state"
	@echo "make run              run the service (customer-groups run)"
	@echo "make test             run the tests (PYTEST_ARGS=...)"
	@echo "make lint             ruff check, ruff format --check, mypy"
	@echo "make bench            run the benchmark (BENCH_ARGS=...)"
	@echo "make chaos            instances under load and faults for 10 minutes, checked (CHAOS_ARGS=...)"
	@echo "make clean            stop the services and delete their local data (keeps the Kafka jar cache)"

venv: $(VENV)/.installed

# Reinstall only when pyproject.toml or the lock is newer than the stamp. The locked packages go
# in first, hash-checked; then the project alone, built with the locked setuptools.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python >= 3.11 required; '$(PYTHON)' is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes -r $(LOCK)
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e . -e clients/python
	@touch $@

# The dev lock first (keeping its current pins unless LOCK_ARGS says --upgrade...), then the
# runtime lock for deploy/Dockerfile: the same versions, without the dev extras.
lock:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
		|| { echo "the lock is for Python 3.11 (deploy/Dockerfile); '$(PYTHON)' is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	@test -x $(LOCK_TOOLS)/bin/python || $(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install -q $(LOCK_TOOLS_PINS)
	$(PIP_COMPILE) $(LOCK_ARGS) --extra dev --output-file $(LOCK) pyproject.toml
	$(PIP_COMPILE) --upgrade --constraint $(LOCK) --output-file $(RUNTIME_LOCK) pyproject.toml

services:
	@bash $(SERVICES) start

services-stop:
	@bash $(SERVICES) stop

services-status:
	@bash $(SERVICES) status

run: venv services
	source .local/env && exec $(VENV)/bin/customer-groups run

test: venv services
	source .local/env && $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy service tests clients/python

bench: venv services
	source .local/env && $(VENV)/bin/customer-groups bench $(BENCH_ARGS)

# Every fault kind at least twice over ten minutes; it restarts the local Kafka and PostgreSQL.
chaos: venv services
	source .local/env && $(VENV)/bin/customer-groups chaos --seconds 600 $(CHAOS_ARGS)

clean:
	@bash deploy/local/kafka.sh clean
	@bash deploy/local/postgres.sh drop
	rm -f .local/env
