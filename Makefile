# Two commands for a newcomer: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source (about 5 minutes on two cores, cached by pip after).
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: run test lint typecheck pytest migrate install install-dev system-deps bench clean

run: $(VENV)/.installed migrate
	$(BIN)/streamlit run server.py --server.address 127.0.0.1 --server.port 8501 --server.headless true

migrate: $(VENV)/.installed
	$(BIN)/parley db upgrade
	$(BIN)/parley models prepare

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the CPU build on this machine's disk, not a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The browser test drives Debian's chromium (Playwright never downloads a browser); the
# PostgreSQL tests start a throwaway server from Debian's postgresql; the cluster test
# puts Debian's haproxy in front of two app processes (TLS from openssl).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install-dev
	$(BIN)/mypy --strict parley app.py server.py

pytest: install-dev system-deps
	CI=1 $(BIN)/pytest

test: lint typecheck pytest

# Benchmarks print tables; their figures are quoted in the README. Not part of `make test`.
bench: install-dev
	$(BIN)/python -m parley.bench.ttft
	$(BIN)/python -m parley.bench.memory_table --data ../shared/data/locomo_dev.json
	$(BIN)/python -m parley.bench.documents --data ../shared/data/locomo_dev.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
