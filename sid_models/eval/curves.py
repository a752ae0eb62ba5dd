"""Training curves for the report: per-step metric histories of the pipeline's training runs.

Inside a tracked pipeline run the training stages are sibling MLflow runs of the eval run
(same parent, tagged `stage`), so their logged histories are read back from MLflow. Run bare
(DVC, a notebook) there is no parent run; then the curves come from the histories the
training stages save in their artifact folders: `history.json` (a list of per-epoch dicts,
SCI towers) or `metrics.jsonl` (one per-step dict a line, generative SFT and DPO).
Only metrics named after one of `keys` (see `_wanted`) and that have at least two points are kept.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import mlflow
from mlflow import MlflowClient

from ..tracking import mlflow_key

PARENT_TAG = "mlflow.parentRunId"

Curves = dict[str, dict[str, list[tuple[int, float]]]]


def _wanted(metric: str, keys: Sequence[str]) -> bool:
    """`loss`, `loss_main`, `sft/loss`, `valid_recall@10` match key loss / recall@10; `valid_recall@10_head` does not."""
    name = metric.rsplit("/", 1)[-1]
    spellings = {spelling for key in keys for spelling in (key, mlflow_key(key))}  # MLflow stores recall_at_10
    return any(name == key or name.startswith(f"{key}_") or name.endswith(f"_{key}") for key in spellings)


def curves_from_mlflow(stages: Sequence[str], keys: Sequence[str]) -> Curves | None:
    """Histories of the sibling runs named after `stages`; None when there is no parent run."""
    run = mlflow.active_run()
    parent = None if run is None else run.data.tags.get(PARENT_TAG)
    if parent is None:
        return None
    client = MlflowClient()
    siblings = client.search_runs([run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    curves: Curves = {}
    for sibling in siblings:
        stage = sibling.data.tags.get("stage")
        if stage not in stages:
            continue
        for metric in sibling.data.metrics:
            if not _wanted(metric, keys):
                continue
            history = client.get_metric_history(sibling.info.run_id, metric)
            if len(history) >= 2:
                curves.setdefault(stage, {})[metric] = sorted((point.step, point.value) for point in history)
    return curves


HISTORY_FILES = ("history.json", "metrics.jsonl")


def read_history(path: Path) -> list[dict]:
    """Per-step records from a history.json (a JSON list) or metrics.jsonl (a JSON object a line)."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    history = json.loads(path.read_text())
    if not isinstance(history, list):
        raise ValueError(f"{path} must hold a list of per-step records, got {type(history).__name__}")
    return history


def curves_from_histories(folders: Mapping[str, Path], keys: Sequence[str]) -> Curves:
    """Curves from the history file of each stage that saved one."""
    curves: Curves = {}
    for stage, folder in folders.items():
        path = next((Path(folder) / name for name in HISTORY_FILES if (Path(folder) / name).is_file()), None)
        if path is None:
            continue
        history = read_history(path)
        series: dict[str, list[tuple[int, float]]] = {}
        for position, record in enumerate(history):
            step = int(record.get("step", record.get("epoch", position)))
            for metric, value in _flatten(record).items():
                if metric not in ("step", "epoch") and _wanted(metric, keys) and isinstance(value, (int, float)):
                    series.setdefault(metric, []).append((step, float(value)))
        kept = {metric: points for metric, points in series.items() if len(points) >= 2}
        if kept:
            curves[stage] = kept
    return curves


def _flatten(record: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def training_curves(folders: Mapping[str, Path], keys: Sequence[str]) -> tuple[Curves, str]:
    """(curves, where they came from): MLflow sibling runs when tracked, else history.json files."""
    from_mlflow = curves_from_mlflow(list(folders), keys)
    if from_mlflow is not None and any(from_mlflow.values()):
        return from_mlflow, "MLflow runs of this pipeline run"
    return curves_from_histories(folders, keys), "history.json files of the training stages"
