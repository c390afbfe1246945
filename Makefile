# Fresh machine: `make demo` trains on the embedded default, `make test` checks the import layers
# (lint-imports, pyproject.toml's [tool.importlinter]), runs the tests and builds the docs strictly.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Integration tests and benchmarks read real datasets from here when it exists (never written to).
SHARED_DATA := $(abspath ../shared/data)
# mkdocs-material prints a banner on every build without it
export NO_MKDOCS_2_WARNING := 1
export RESNETKIT_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

.PHONY: install demo test docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/resnetkit train

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q
	$(PY) -m mkdocs build --strict --quiet

# The site (mkdocs.yml, docs/) into site/; a broken link or a missing page is an error.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache
