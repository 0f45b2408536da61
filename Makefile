# Every target sets itself up: `make demo` and `make test` work on a fresh clone.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SWEEP   ?= smoke
PROFILE ?=
PORT    ?= 5000
PROFILE_ARG := $(if $(PROFILE),--profile $(PROFILE),)

.PHONY: setup test test-ui test-reliability lint demo sweep plots bench ui docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The pinned CPU wheel first: a bare `torch` would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Two passes: the tests that neither start Ray nor wait on deadlines on two workers, then those
# (marked serial by tests/conftest.py) alone.
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

clean:
	rm -rf .harness mlflow.db mlartifacts results/cache
