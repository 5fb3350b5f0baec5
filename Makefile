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

.PHONY: install demo serve lint test image image-setup image-test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip==25.3'
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(PY) -m emulator demo --workdir $(WORK) --model-name $(MODEL_NAME) --model-version $(MODEL_VERSION) $(IMAGES)

serve: install
	$(PY) -m emulator demo --prepare-only --workdir $(WORK) --model-name $(MODEL_NAME) --model-version $(MODEL_VERSION)
	$(PY) -m emulator serve --port $(PORT) --model-root $(MODEL_ROOT) --model-name $(MODEL_NAME) --model-alias live

# The container image: docker when a daemon answers, else podman (infra/image_setup.sh installs it).
image: install
	$(PY) -m infra.image build --tag breedserve:latest

image-setup:
	bash infra/image_setup.sh

# Builds the local base and the repo's Dockerfile, then serves a prediction through the container.
image-test: install image-setup
	CI=$${CI:-true} $(PY) -m pytest -q tests/emulator/test_image.py

# Latency (on the demo model) then cost; writes benchmarks/reports/.
bench: install
	$(PY) -m emulator demo --prepare-only --workdir $(WORK) --model-name $(MODEL_NAME) --model-version $(MODEL_VERSION)
	$(PY) -m benchmarks latency --out benchmarks/reports --model-root $(MODEL_ROOT) --model-name $(MODEL_NAME) --model-version $(MODEL_VERSION)
	$(PY) -m benchmarks cost --scenario benchmarks/scenarios/measured.toml --latency benchmarks/reports/latency.json --out benchmarks/reports

# Lint and type checks (STYLE.md: mypy in CI); `make test` runs them first.
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy handler model_store benchmarks emulator infra training

# Every test, the container image included (image-setup first, so the image tests cannot skip).
test: install image-setup lint
	CI=$${CI:-true} $(PY) -m pytest -q

clean:
	rm -rf $(WORK) .pytest_cache
