"""MLflow logging from library code.

Library functions log to the caller's active MLflow run when there is one (Dagster's
MLflow resource or the DVC stage CLI opens it) and log nothing when called bare, e.g.
from a notebook or a unit test. mlflow is never imported here: a run can only be active
once the caller has imported mlflow, so the library also runs where MLflow is not
installed (a slim GPU or serving image).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from .params import REPO_ROOT

# The one default store of every runner (Dagster, the DVC command line, sidr, the benchmarks).
DEFAULT_TRACKING_URI = f"sqlite:///{REPO_ROOT / 'mlflow' / 'mlflow.db'}"
DEFAULT_ARTIFACT_ROOT = REPO_ROOT / "mlflow" / "artifacts"
EXPERIMENT = "sid-retrieval"


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the repository's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def setup_experiment(uri: str, artifact_root: str | Path = DEFAULT_ARTIFACT_ROOT, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at `uri` and make `experiment` the active one, created when missing; returns
    its id. The one setup of every runner (Dagster's resource, the DVC command line).

    A SQLite store's folder is created. A tracking server (http[s]://) keeps artifacts where it
    was told to (`mlflow server --artifacts-destination`), so `artifact_root` is used only for a
    store the client writes itself. The experiment is tagged as a model-development one
    (without the tag MLflow 3 opens it as a GenAI one).
    """
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    elif uri.startswith(("http://", "https://")):
        experiment_id = mlflow.create_experiment(experiment)
    else:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        experiment_id = mlflow.create_experiment(experiment, artifact_location=Path(artifact_root).as_uri())
    if found is None or EXPERIMENT_KIND_TAG not in found.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def mlflow_key(key: str) -> str:
    """A metric/param/tag name as MLflow accepts it: '@' is not allowed, so recall@10 -> recall_at_10."""
    return key.replace("@", "_at_")


def active() -> bool:
    mlflow = sys.modules.get("mlflow")
    return mlflow is not None and mlflow.active_run() is not None


def log_params(params: Mapping[str, Any], prefix: str = "") -> None:
    if active():
        import mlflow

        flat = flatten(params, prefix)
        mlflow.log_params({mlflow_key(key): str(value)[:500] for key, value in flat.items()})


# Callables `sink(metrics, step)` that see every log_metrics call, MLflow run or not: a launcher
# forwards a training process's per-step metrics with one (orchestration/pipes_stage.py).
METRIC_SINKS: list[Callable[[dict[str, float], int | None], None]] = []


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    for sink in METRIC_SINKS:
        sink({key: float(value) for key, value in metrics.items()}, step)
    if active():
        import mlflow

        mlflow.log_metrics({mlflow_key(key): float(value) for key, value in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if active():
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
