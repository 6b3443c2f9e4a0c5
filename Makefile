# Two entry points for a fresh machine with python3 and make:
#   make demo   - create .venv, install pyica, score the bundled example images with the default model
#   make test   - create .venv, install pyica with its test extras, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    := out

.PHONY: demo test install install-dev examples clean

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

# Regenerate the synthetic example images (they are committed; this is how they were made).
examples: $(VENV)/.core
	$(BIN)/python examples/make_examples.py examples/images

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
