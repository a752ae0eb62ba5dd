"""The one way an asset runs a pipeline stage: versioned folder, nested MLflow run, hashed output."""
from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import mlflow
import mlflow.data

from sid_models.artifacts import content_hash
from sid_models.cli import publish_metrics
from sid_models.eval.stage import reports_dir
from sid_models.params import REPO_ROOT
from sid_models.stage_runner import write_stage
from sid_models.stages import STAGES, run_stage
from sid_models import tracking

from .launch import launched, pipes_runner
from .resources import MlflowTracking, ParamsResource

ARTIFACT_ROOT = REPO_ROOT / "artifacts"


def _metadata_value(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return dg.MetadataValue.json(value)


DATASET_STAGE, REPORT_STAGE = "raw_dataset", "eval_report"


def log_dataset_input(run_id: str, folder: Path, config: dict) -> None:
    """The canonical items table as the run's MLflow dataset input, with the DVC version."""
    from mlflow.entities import DatasetInput, InputTag

    from sid_models.data.loaders import load_parquet_layout
    from sid_models.data.schema import DataError
    from sid_models.data.versioning import dataset_version

    dataset = load_parquet_layout(folder)
    try:
        version = dataset_version(config)
    except DataError as error:       # a dataset DVC does not track yet: say so on the input
        version = f"untracked ({error})"
    logged = mlflow.data.from_pandas(dataset.items, source=dataset.source or str(folder), name=dataset.name)
    mlflow.MlflowClient().log_inputs(run_id, datasets=[DatasetInput(logged._to_mlflow_entity(), tags=[
        InputTag("mlflow.data.context", "training"), InputTag("dvc.version", version[:500]),
        InputTag("n_queries", str(len(dataset.queries))), InputTag("n_judgments", str(len(dataset.judgments)))])])


def materialize_stage(context: dg.AssetExecutionContext, stage: str, inputs: dict[str, str],
                      params: ParamsResource, mlflow_tracking: MlflowTracking) -> dg.Output[str]:
    """Run `stage` into artifacts/<stage>/<run id>/, return its folder path with metadata.

    The folder is written under a temporary name and renamed only when the stage succeeded,
    so a failed stage leaves no artifact behind.
    """
    final = ARTIFACT_ROOT / stage / context.run.run_id
    config = params.load()
    position = list(STAGES).index(stage) + 1
    context.log.info(f"stage {position} of {len(STAGES)}: {stage} ...")
    with mlflow_tracking.stage_run(context, stage, config) as run:
        tracking.log_params({"stage": stage})
        runner = pipes_runner(context) if launched(stage, config) else run_stage
        metadata = write_stage(stage, config, {key: Path(value) for key, value in inputs.items()}, final, runner)
        digest = content_hash(final)
        tracking.log_params({"artifact_hash": digest, "artifact_path": str(final)})
        numeric = {key: value for key, value in metadata.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        tracking.log_metrics(numeric)
        mlflow_run_id = run.info.run_id
        parent = run.data.tags["mlflow.parentRunId"]
    # where `dvc metrics show` reads it, as the DVC command line publishes it
    publish_metrics(stage, final, reports_dir(config["eval"]))
    if stage == DATASET_STAGE:
        log_dataset_input(parent, final, config)
    elif stage == REPORT_STAGE:
        client = mlflow.MlflowClient()
        client.log_batch(parent, metrics=[mlflow.entities.Metric(key, float(value), int(time.time() * 1000), 0)
                                          for key, value in numeric.items()])
        client.log_artifact(parent, str(final / "report.html"), "report")
    context.log.info(f"{stage}: wrote {final} (sha256 {digest[:12]})")
    return dg.Output(str(final), metadata={
        "artifact_path": dg.MetadataValue.path(str(final)),
        "sha256": digest,
        "mlflow_run_id": mlflow_run_id,
        **{key: _metadata_value(value) for key, value in metadata.items()},
    })


def check_result(outcome: tuple[bool, str, dict]) -> dg.AssetCheckResult:
    """A (passed, description, metadata) verdict of a sid_models check as Dagster's check result."""
    passed, description, metadata = outcome
    return dg.AssetCheckResult(passed=passed, description=description, metadata=metadata)
