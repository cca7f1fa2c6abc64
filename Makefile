# Two commands on a fresh machine (python3 with venv + pip is all they assume):
#   make test   installs the package with its test extra into .venv and runs the test suite
#   make demo   (see README) synthesize -> LMDB -> datasets -> train -> evaluate -> predict
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test test-fast clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch==2.13.0 first when no torch is importable: an unpinned torch would pull gigabytes of CUDA wheels.
# A user who already has a (CUDA) torch in .venv keeps it.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test,tensorboard]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
