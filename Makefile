# Two entry points (see README):
#   make demo   set up everything on a fresh machine and run the main job
#   make test   set up the Python environment and run the default test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
DEMO_ARGS ?=

.PHONY: demo test test-all bench data env lint

$(BIN)/qadv: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

env: $(BIN)/qadv

# Real Fashion-MNIST for offline machines: the Debian package dataset-fashion-mnist.
data:
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST found in /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: not root; install dataset-fashion-mnist yourself or pass --data-dir (see README)"; fi

demo: env data
	$(BIN)/qadv demo $(DEMO_ARGS)

# loadgroup: the tests that share a module or session fixture run on one worker
# (tests/conftest.py groups them); no reorder: the heavy modules go first.
PYTEST_XDIST := -n 2 --dist loadgroup --no-loadscope-reorder

test: env
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_XDIST) -q

test-all: env
	$(BIN)/python -m pytest $(PYTEST_XDIST) -q

bench: env
	$(BIN)/python benchmarks/bench_attacks.py
	$(BIN)/python benchmarks/bench_protocol.py

lint: env
	$(BIN)/ruff check qadv tests experiments benchmarks
	$(BIN)/ruff format --check qadv tests experiments benchmarks
