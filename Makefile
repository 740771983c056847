# Two entry points (see README): `make demo` runs the synthetic reproduction, `make test` runs the fast suite.
# Both create .venv on first use with the CPU build of torch, so nothing multi-GB is downloaded.
# `make test-all` runs the slow tier (torchrun launches, kills, full corpora, the browser); CI runs both.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-all lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/lagvae demo

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/pytest -m "not slow"

test-all: $(BIN)/.installed
	$(BIN)/pytest -m slow

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_synthetic.py

clean:
	rm -rf $(VENV) runs
