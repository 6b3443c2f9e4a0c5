# Two entry points for a fresh machine with python3 and make:
#   make demo   - create .venv, install pyica, score the bundled example images with the default model
#   make test   - create .venv, install pyica with its test extras, run the test suite
#                 (without the slow `compare` tests: pyproject.toml's addopts leaves them out)
#   make test-compare - only the `compare` tests (the comparison benchmark training ICNet; about a minute)
#   make test-all     - every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    := out

.PHONY: demo test test-compare test-all install install-dev examples clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.core

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(BIN)/pyica score examples/images -o $(OUT)/example_scores.csv --overwrite
	@cat $(OUT)/example_scores.csv

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

test-compare: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m compare

test-all: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "compare or not compare"

# Regenerate the synthetic example images (they are committed; this is how they were made).
examples: $(VENV)/.core
	$(BIN)/python examples/make_examples.py examples/images

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
