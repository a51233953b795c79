# The two commands of this project. Each creates .venv/ with the pinned stack on first use.
PY := .venv/bin/python

.PHONY: setup test lint demo

setup:
	bash tools/setup_env.sh

lint: setup
	.venv/bin/ruff check .

# Two pytest-xdist workers, one per core, each running whole test files (--dist loadfile), so that a file's
# module-scoped fixtures are made once, in the order tests/conftest.py gives them (longest first; xdist would order
# them by their number of tests). `make test TEST_WORKERS=0` runs the tests in pytest's own process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# torch's default OpenMP spinning: passive waiting made the demo's training steps 45% slower on the quiet machine;
# on cores shared with other jobs `OMP_WAIT_POLICY=PASSIVE make demo` avoids stalls (docs/demo.md).
demo: setup
	$(PY) tools/demo.py
