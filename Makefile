# Two commands from a fresh clone: `make demo` and `make test` (see README.md).
# Each creates .venv in the repo root and installs the pinned dependencies first;
# the install is skipped while .venv is newer than requirements.txt and pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Where the LIDC data lives (see README "Data"). Defaults to ../shared/data when that exists.
NODULE_MALIGNANCY_DATA ?= $(wildcard $(abspath ../shared/data))
export NODULE_MALIGNANCY_DATA

.PHONY: demo test test-fast test-slow lint format bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nodule-malignancy demo --out demo_output

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The edit loop: no data, no browser, no fresh-venv install, nothing slow; two processes.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -m "not slow and not needs_data and not browser and not install"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(VENV)/bin/nodule-malignancy bench

clean:
	rm -rf $(VENV) demo_output
