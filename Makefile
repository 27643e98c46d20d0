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

# The benchmark: every method and baseline on the demo model and held-out stdlib prompts (< 3 min
# on 2 cores); prints the table, full report in bench-out/ (report.md, results.json, speedup.png).
# One thread: the demo model is too small to gain from two, and a busy machine cannot then
# oversubscribe its cores (which slows OpenMP down many times over).
run: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/tokenforge bench --model demo --draft-model demo-draft \
		--methods all --dataset stdlib-heldout --limit 6 --max-new-tokens 96 --device cpu \
		--out bench-out

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
