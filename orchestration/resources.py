"""Dagster resources: params.yaml access and MLflow tracking."""
from __future__ import annotations

import contextlib
from typing import Iterator

import dagster as dg
import mlflow

from sid_models.params import load_params
from sid_models.tracking import (DEFAULT_ARTIFACT_ROOT, DEFAULT_TRACKING_URI, EXPERIMENT, flatten, mlflow_key,
                                 setup_experiment)
from sid_models.stage_runner import close_orphan_runs, run_tags

DAGSTER_RUN_TAG = "dagster.run_id"


class ParamsResource(dg.ConfigurableResource):
    """params.yaml, optionally replaced by another file (tests use a reduced copy)."""

    path: str = ""

    def load(self) -> dict:
        return load_params(self.path or None)


class MlflowTracking(dg.ConfigurableResource):
    """One MLflow parent run per Dagster run (tagged with its run id), nested runs per asset."""

    tracking_uri: str = DEFAULT_TRACKING_URI
    artifact_root: str = str(DEFAULT_ARTIFACT_ROOT)
    experiment: str = EXPERIMENT

    def setup(self) -> str:
        return setup_experiment(self.tracking_uri, self.artifact_root, self.experiment)

    def parent_run_id(self, dagster_run_id: str, job_name: str, params: dict | None = None) -> str:
        """The parent run of this Dagster run, created on first use with the pipeline's params
        (when given) and a description."""
        experiment_id = self.setup()
        # Nested stage runs carry the run id tag too; only the parent carries the job tag.
        found = mlflow.search_runs(experiment_ids=[experiment_id],
                                   filter_string=f"tags.`{DAGSTER_RUN_TAG}` = '{dagster_run_id}' "
                                                 f"and tags.`dagster.job` = '{job_name}'",
                                   output_format="list")
        if found:
            return found[0].info.run_id
        client = mlflow.MlflowClient()
        run = client.create_run(experiment_id, run_name=f"dagster-{job_name}-{dagster_run_id[:8]}",
                                tags={DAGSTER_RUN_TAG: dagster_run_id, "dagster.job": job_name,
                                      "mlflow.note.content": f"Dagster run {dagster_run_id} of job {job_name}: one "
                                      "nested run per stage; params.yaml as params, the dataset as input, the "
                                      "report's headline metrics and the report itself."})
        if params is not None:
            client.log_batch(run.info.run_id, params=[mlflow.entities.Param(mlflow_key(key), str(value)[:500])
                                                      for key, value in flatten(params).items()])
        return run.info.run_id

    @contextlib.contextmanager
    def stage_run(self, context: dg.AssetExecutionContext, stage: str,
                  params: dict | None = None) -> Iterator[mlflow.ActiveRun]:
        """Nested MLflow run for one asset, under this Dagster run's parent run."""
        parent = self.parent_run_id(context.run.run_id, context.run.job_name, params)
        while mlflow.active_run() is not None:  # a failed earlier asset in this process left a run open
            mlflow.end_run("FAILED")
        close_orphan_runs(mlflow.MlflowClient(), mlflow.get_run(parent).info.experiment_id, stage)
        with mlflow.start_run(run_id=parent):
            with mlflow.start_run(run_name=stage, nested=True,
                                  tags={DAGSTER_RUN_TAG: context.run.run_id, "stage": stage, **run_tags()}) as run:
                yield run
