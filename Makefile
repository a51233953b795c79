# The two commands of this project. Each creates .venv/ with the pinned stack on first use.
PY := .venv/bin/python

.PHONY: setup test lint demo

setup:
	bash tools/setup_env.sh

lint: setup
	.venv/bin/ruff check .

test: setup
	$(PY) -m pytest tests

# Passive OpenMP waiting: with torch's default spinning, two threads on two shared cores ran the quick demo
# 10x slower when other jobs used the cores (docs/demo.md).
demo: setup
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) tools/demo.py
