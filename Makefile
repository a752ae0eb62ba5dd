# sid-retrieval: `make run` sets everything up and runs the pipeline; `make test` runs the tests.
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DVC_ENV := .tools/dvc
DVC := $(DVC_ENV)/bin/dvc
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export GX_ANALYTICS_ENABLED := False
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow/mlflow.db
export PATH := $(CURDIR)/$(DVC_ENV)/bin:$(PATH)

.PHONY: setup run test test-all ui bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	# torch first, from the CPU wheel: anything else lets pip pull a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# DVC lives in its own environment: its hydra pins an antlr that breaks Dagster's selection parser.
$(DVC_ENV)/.installed: dvc-requirements.txt
	test -x $(DVC_ENV)/bin/python || $(PYTHON_BOOT) -m venv $(DVC_ENV)
	$(DVC_ENV)/bin/python -m pip install --quiet -r dvc-requirements.txt
	touch $@

setup: $(VENV)/.installed $(DVC_ENV)/.installed
	mkdir -p $(DAGSTER_HOME) mlflow/artifacts
	test -f $(DAGSTER_HOME)/dagster.yaml || cp orchestration/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

run: setup
	$(PY) -m orchestration.run

test: setup
	$(PY) -m pytest -m "not slow" -q

test-all: setup
	$(PY) -m pytest -q

ui: setup
	$(VENV)/bin/dagster dev -m orchestration.definitions

bench: setup
	for script in benchmarks/*.py; do $(PY) $$script --quick; done

clean:
	rm -rf artifacts .dagster_home reports/*.md reports/*.html
