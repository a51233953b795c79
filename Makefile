# The two commands of this project. Each creates .venv/ with the pinned stack on first use.
PY := .venv/bin/python

.PHONY: setup test lint demo

setup:
	bash tools/setup_env.sh

lint: setup
	.venv/bin/ruff check .

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) tools/demo.py
