# keras-ipguard developer commands. `make install` then `make test`.
# Uses the active virtualenv if there is one, else creates .venv here.
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PYTHON := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3
# In the development workspace, the prepared datasets beside the project.
TFDS_DATA_DIR ?= $(wildcard $(CURDIR)/../shared/tensorflow_datasets)
export TFDS_DATA_DIR

.PHONY: install test test-fast lint bench paper clean

install:
	test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[test]"

# One pytest-xdist worker per core, at most 4 (each holds its own TensorFlow, 1-2 GiB); a test file stays on
# one worker (its module fixtures are built once), in tests/conftest.py's order (files that train on real
# data first). TEST_WORKERS=0 runs in this process (pdb, -s).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); if [ $$n -gt 4 ]; then n=4; fi; echo $$n)
PYTEST := $(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test:
	$(PYTEST)

# The fast subset (no end-to-end training on real data): under 3 minutes on 2 cores.
test-fast:
	$(PYTEST) -m "not slow"

lint:
	$(VENV)/bin/ruff check .

bench:
	$(PYTHON) benchmarks/run.py

# Every watermark scheme embedded, verified and attacked on Fashion-MNIST and
# CIFAR-10 (reduced CIFAR-10 without a GPU); results in docs/results/paper/.
paper:
	$(PYTHON) -m keras_ipguard.paper $(PAPER_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
