# The two commands of this project. Each creates .venv/ with the pinned stack on first use.
PY := .venv/bin/python

.PHONY: setup test demo

setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) tools/demo.py
