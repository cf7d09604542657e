# Everything a fresh machine needs: `make run` (the embedded demo) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch is installed first so that pip never resolves `torch>=2.4` to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,train]"
	touch $@

run: $(VENV)/.installed
	$(PY) -m broker_plugin demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_decode.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
