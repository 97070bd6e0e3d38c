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

demo: setup  ## main job on the embedded default: train the tiny preset on the synthetic dataset, infer, bench (CPU)
	$(VENV)/bin/ssn train --preset tiny --synthetic --data data/synth --out runs/tiny.safetensors --quiet
	$(VENV)/bin/ssn infer --checkpoint runs/tiny.safetensors --out runs/maps \
		data/synth/metal/test/good/000.png data/synth/metal/test/scratch/000.png data/synth/metal/test/stain/000.png
	$(PY) bench/throughput.py --providers reference folded

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint  ## ruff + the CPU test suite
	$(PY) -m pytest -q

mutants: setup  ## mutation testing (mutmut) of the costliest modules, each with its own tests; not in CI (tests/MUTANTS.md)
	nice -n 10 $(PY) tests/mutation.py $(MODULES)

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .
