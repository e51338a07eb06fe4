# reft-trl: every target is a thin wrapper around a recipe or a tool; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pins torch to the tested CPU build (see constraints/cpu.txt). GPU machines: `make install CONSTRAINTS=`.
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS ?= dev,deepspeed,plot
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install test test-fast lint format clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(CONSTRAINTS),$(PY) -m pip install -q -r $(CONSTRAINTS),)
	$(PY) -m pip install -q $(PIP_C) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install reft-trl with its dev/deepspeed/plot extras

test: install  ## run the whole test suite (what CI runs)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-fast: install  ## the test suite without the slow multi-process / recipe tests
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

lint: install  ## ruff check + format check
	$(VENV)/bin/ruff check src tests recipes benchmarks
	$(VENV)/bin/ruff format --check src tests recipes benchmarks

format: install  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests recipes benchmarks
	$(VENV)/bin/ruff format src tests recipes benchmarks

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
