# Everyday commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= train,dev

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format services benchmarks

help: ## list the everyday commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$*]'
	touch $@

install: $(VENV)/.installed-$(EXTRAS) ## create .venv and install idcscan (EXTRAS=train,dev by default)

demo: $(VENV)/.installed-dev ## the whole service on embedded defaults, end to end (no servers needed)
	$(BIN)/idcscan demo

test: $(VENV)/.installed-train,dev ## run every test (integration tests skip, with the reason, without Redis/PostgreSQL)
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed-train,dev ## unit tests only
	$(BIN)/python -m pytest -m "not integration and not slow"

lint: $(VENV)/.installed-train,dev ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy idcscan

format: $(VENV)/.installed-train,dev ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

services: ## start local Redis and PostgreSQL if they do not answer (Debian packages)
	scripts/start-services.sh
