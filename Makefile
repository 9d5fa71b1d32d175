SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
SERVICES := deploy/local/services.sh
# Extra arguments, e.g.  make test PYTEST_ARGS='-x -k groups'   make bench BENCH_ARGS='--help'
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help venv services services-stop services-status run test lint bench clean

help:
	@echo "make venv             create .venv and install the project with its dev extras"
	@echo "make services         start local Kafka + PostgreSQL, write .local/env"
	@echo "make services-stop    stop them"
	@echo "make services-status  show their state"
	@echo "make run              run the service (customer-groups run)"
	@echo "make test             run the tests (PYTEST_ARGS=...)"
	@echo "make lint             ruff check, ruff format --check, mypy"
	@echo "make bench            run the benchmark (BENCH_ARGS=...)"
	@echo "make clean            stop the services and delete their local data (keeps the Kafka jar cache)"

venv: $(VENV)/.installed

# Reinstall only when pyproject.toml is newer than the stamp.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python >= 3.11 required; '$(PYTHON)' is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

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
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy service tests

bench: venv services
	source .local/env && $(VENV)/bin/customer-groups bench $(BENCH_ARGS)

clean:
	@bash deploy/local/kafka.sh clean
	@bash deploy/local/postgres.sh drop
	rm -f .local/env
