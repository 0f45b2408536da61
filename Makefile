# Every target sets itself up: `make demo` and `make test` work on a fresh clone.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SWEEP   ?= smoke
PROFILE ?=
PROFILE_ARG := $(if $(PROFILE),--profile $(PROFILE),)

.PHONY: setup test lint demo sweep plots bench ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The pinned CPU wheel first: a bare `torch` would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# The main job: a small real sweep on local Ray, logged to MLflow, laws fitted, plots written.
demo: setup
	$(BIN)/harness submit sweeps/smoke.yaml
	$(BIN)/harness plots --experiment smoke --refresh
	@echo "figures and report: results/smoke/ and results/report.md"
	@echo "MLflow UI:          make ui   (then open http://127.0.0.1:5000)"

# Any study: make sweep SWEEP=sparsity [PROFILE=gpu]
sweep: setup
	$(BIN)/harness submit sweeps/$(SWEEP).yaml $(PROFILE_ARG)

plots: setup
	$(BIN)/harness plots

bench: setup
	$(BIN)/harness bench

ui: setup
	$(BIN)/harness ui

clean:
	rm -rf .harness mlflow.db mlartifacts results/cache
