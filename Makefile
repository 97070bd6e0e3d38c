# Two entry points (README): `make demo` and `make test`. Both create/reuse the virtual environment.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint bench format mutants

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## the main job, end to end on the embedded default (CPU): synth, train tiny, deploy, serve, stream 4 cameras
	$(VENV)/bin/ssn demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint  ## ruff + the CPU test suite
	$(PY) -m pytest -q

mutants: setup  ## mutation testing (mutmut) of the costliest modules, each with its own tests; not in CI (tests/MUTANTS.md)
	nice -n 10 $(PY) tests/mutation.py $(MODULES)

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .
