# Everything runs from the project's own virtual environment; `make repro` and `make test` create it.
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

MLFLOW_PORT ?= 5000

.PHONY: setup repro test test-fast lint ui ablation params

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

setup: $(VENV)/.installed  ## create .venv and install the project with its test tools

repro: setup  ## run the pipeline (only what changed), then say how dvc.lock compares with the committed one
	dvc repro
	@thaw lockcheck

test: setup  ## the whole suite, slow end-to-end tests included (what CI runs), one worker per core
	python -m pytest -n auto --dist loadfile --durations=15

test-fast: setup  ## unit tests only
	python -m pytest -n auto --dist loadfile -m "not slow"

lint: setup
	ruff check . && ruff format --check .

params: setup  ## recompose params.yaml from conf/ (after editing conf/)
	thaw compose

ui: setup  ## the MLflow UI on the embedded store, loopback only, opened on the runs table
	@echo "runs: http://127.0.0.1:$(MLFLOW_PORT)/#/experiments/$$(python -c 'import mlflow; e = mlflow.MlflowClient("sqlite:///$(CURDIR)/mlflow.db").get_experiment_by_name("thaw"); print(e.experiment_id if e else 0)' 2>/dev/null)?workflowType=machine_learning"
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

ablation: setup  ## the fair ablation: every arm, 5 seeds, 4 label budgets (about 70 min on 2 cores)
	python benchmarks/ablation.py
