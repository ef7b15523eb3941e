# The two commands of the README contract, and the steps they are made of.
.PHONY: setup demo test lint typecheck unit clean

VENV := .venv/bin

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/python -m dbfence demo

lint: setup
	$(VENV)/ruff check dbfence tests benchmarks

typecheck: setup
	$(VENV)/mypy

unit: setup
	$(VENV)/python -m pytest

test: lint typecheck unit

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
