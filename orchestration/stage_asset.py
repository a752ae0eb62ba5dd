"""The one way an asset runs a pipeline stage: versioned folder, nested MLflow run, hashed output."""
from __future__ import annotations

from pathlib import Path

import dagster as dg

from sid_models.artifacts import content_hash
from sid_models.params import REPO_ROOT
from sid_models.stage_runner import write_stage
from sid_models.stages import STAGES
from sid_models import tracking

from .resources import MlflowTracking, ParamsResource

ARTIFACT_ROOT = REPO_ROOT / "artifacts"


def _metadata_value(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return dg.MetadataValue.json(value)


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
    with mlflow_tracking.stage_run(context, stage) as run:
        tracking.log_params({"stage": stage})
        metadata = write_stage(stage, config, {key: Path(value) for key, value in inputs.items()}, final)
        digest = content_hash(final)
        tracking.log_params({"artifact_hash": digest, "artifact_path": str(final)})
        numeric = {key: value for key, value in metadata.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        tracking.log_metrics(numeric)
        mlflow_run_id = run.info.run_id
    context.log.info(f"{stage}: wrote {final} (sha256 {digest[:12]})")
    return dg.Output(str(final), metadata={
        "artifact_path": dg.MetadataValue.path(str(final)),
        "sha256": digest,
        "mlflow_run_id": mlflow_run_id,
        **{key: _metadata_value(value) for key, value in metadata.items()},
    })
