# Every target sets itself up: `make demo` and `make test` work on a fresh clone.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SWEEP   ?= smoke
PROFILE ?=
PORT    ?= 5000
PROFILE_ARG := $(if $(PROFILE),--profile $(PROFILE),)

.PHONY: setup test test-ui test-reliability lint demo sweep plots bench ui docs clean \
        gpu-wheels gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The pinned CPU wheel first: a bare `torch` would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Two passes: the tests that neither start Ray, wait on deadlines nor run several training
# processes, on two workers; then those (marked serial by tests/conftest.py) alone.
test: setup
	$(BIN)/python -m pytest -q -n 2 -m "not ui and not reliability_slow and not serial"
	$(BIN)/python -m pytest -q -m "serial and not ui and not reliability_slow"

# Every fault-injection test, the long ones too (chaos sweep, MLflow server restart, 8-trial
# load): about 10 minutes on 2 cores. The short ones also run in `make test`.
test-reliability: setup
	$(BIN)/python -m pytest -q tests/reliability -m "reliability_slow or not reliability_slow"

# The MLflow UI in headless Chromium (skips without /usr/bin/chromium and chromedriver;
# Debian: apt-get install chromium chromium-driver). Saves results/ui/*.png.
test-ui: setup
	$(BIN)/python -m pytest -q -m ui tests/test_ui_browser.py

lint: setup
	$(BIN)/ruff check .

# The main job: a small real sweep on local Ray, logged to MLflow, laws fitted, plots written.
# Its figures go to results-local/ (not tracked), so the committed results/ stay as they are.
demo: setup
	$(BIN)/harness submit sweeps/smoke.yaml
	$(BIN)/harness plots --experiment smoke --refresh --out results-local
	@echo "figures and report: results-local/smoke/ and results-local/report.md"
	@echo "next: $(BIN)/harness status smoke · make ui · make plots"

# Any study: make sweep SWEEP=sparsity [PROFILE=gpu]
sweep: setup
	$(BIN)/harness submit sweeps/$(SWEEP).yaml $(PROFILE_ARG)

plots: setup
	$(BIN)/harness plots

bench: setup
	$(BIN)/harness bench

# make ui PORT=5001 for another port; the command prints the URL to open.
ui: setup
	$(BIN)/harness ui --port $(PORT)

# docs/yaml-reference.md from the pydantic models (tests/test_schema.py checks it is current).
docs: setup
	$(BIN)/harness schema > docs/yaml-reference.md.tmp
	mv docs/yaml-reference.md.tmp docs/yaml-reference.md

# The CUDA path on a GPU box that has python with a CUDA torch but no Ray, MLflow or pydantic
# (docs/cluster.md, "A lone GPU box"). On a machine with the package index: `make gpu-wheels`
# (pydantic and pytest for Python $(GPU_PYVER), a few MB, into wheels/); copy the checkout with
# wheels/ to the box; there `make gpu-check` unpacks them into .gpu-deps/ (no pip needed) and
# runs harness/bench/gpu_check.py: GPU tests, bench, profile trials, packing -> results/gpu/.
GPU_PY    ?= python3
GPU_PYVER ?= 3.12
gpu-wheels: setup
	$(BIN)/pip download --quiet --dest wheels --only-binary=:all: --python-version $(GPU_PYVER) \
	  --platform manylinux2014_x86_64 pydantic pytest

gpu-check:
	$(GPU_PY) -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('.gpu-deps') for w in glob.glob('wheels/*.whl')]"
	PYTHONPATH=$(CURDIR):$(CURDIR)/.gpu-deps $(GPU_PY) -m harness.bench.gpu_check --out results/gpu

clean:
	rm -rf .harness mlflow.db mlartifacts results/cache
