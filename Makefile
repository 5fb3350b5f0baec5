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

demo: install
	$(PY) -m emulator demo --workdir $(WORK) --model-name $(MODEL_NAME) --model-version $(MODEL_VERSION) $(IMAGES)

serve: install
	$(PY) -m emulator demo --prepare-only --workdir $(WORK) --model-name $(MODEL_NAME) --model-version $(MODEL_VERSION)
	$(PY) -m emulator serve --port $(PORT) --model-root $(MODEL_ROOT) --model-name $(MODEL_NAME) --model-alias live

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(WORK) .pytest_cache
