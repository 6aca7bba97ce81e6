# The two set-up commands of the README. Each one does all of its own set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

## make run: install the project and start control, SFU and TURN on embedded defaults.
run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/hushroom up

## make test: install the project with its dev extras, lint, and run the whole suite.
test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(MAKE) lint
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
