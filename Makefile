# Two entry points for a fresh machine with python3 and make:
#   make demo   - create .venv, install pyica, score the bundled example images with the default model
#   make test   - create .venv, install pyica with its test extras, run the test suite
#                 (without the slow `compare` tests: pyproject.toml's addopts leaves them out)
#   make test-compare - only the `compare` tests (the comparison benchmark training ICNet; about a minute)
#   make test-all     - every test
#   make mutate       - the mutation check: each paper detail in tests/mutations.txt changed must fail its tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    := out
# Exact versions for our own setup (torch's CPU build); pyproject.toml declares ranges.
CONSTRAINTS := constraints.txt
# Where `pyica train NAME` finds a named dataset without --root ($PYICA_DATA/<dataset>): the shared copy
# beside the repository, unless the environment says otherwise.
PYICA_DATA ?= $(abspath ../shared/data)
export PYICA_DATA

.PHONY: demo test test-compare test-all mutate install install-dev examples clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-run the install whenever pyproject.toml or the constraints change.
$(VENV)/.core: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
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

# every paper detail the tests pin must make them fail when changed (tests/mutations.txt)
mutate: $(VENV)/.dev
	$(BIN)/python tests/mutate.py

test-all: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "compare or not compare"

# Regenerate the synthetic example images (they are committed; this is how they were made).
examples: $(VENV)/.core
	$(BIN)/python examples/make_examples.py examples/images

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
