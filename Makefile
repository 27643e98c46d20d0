# Two commands on a fresh clone: `make run` (set up + benchmark on the demo model), `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint setup clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The CPU build of torch goes in first, so that the package's torch range is already met and pip
# never pulls a multi-GB CUDA build. GPU users install their CUDA torch first (see README).
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tokenforge generate --model demo --max-new-tokens 64 "def fibonacci(n):"

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
