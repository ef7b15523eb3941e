# The two commands of the README contract, and the steps they are made of.
.PHONY: setup demo test lint typecheck coverage unit clean

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
	$(VENV)/python -m pytest -n 2 --dist loadfile --durations=25

# 100 % branch coverage of the decision core, from its fast tests (the model checker runs in `unit`).
coverage: setup
	$(VENV)/python -m pytest -q tests/agent -k "not model_check and not properties" -p no:randomly \
		--cov=dbfence.agent --cov-branch --cov-report=term-missing

test: lint typecheck coverage unit

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
