"""Dagster resources: params.yaml access and MLflow tracking."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import dagster as dg
import mlflow

from sid_models.params import load_params
from sid_models.tracking import DEFAULT_ARTIFACT_ROOT, DEFAULT_TRACKING_URI, EXPERIMENT, flatten, mlflow_key
from sid_models.stage_runner import close_orphan_runs, run_tags

DAGSTER_RUN_TAG = "dagster.run_id"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


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

    @property
    def served_artifacts(self) -> bool:
        """A tracking server (http[s]://) stores artifacts where it was told to (`mlflow server
        --artifacts-destination`); `artifact_root` is then not used."""
        return self.tracking_uri.startswith(("http://", "https://"))

    def setup(self) -> str:
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is None and self.served_artifacts:
            experiment_id = mlflow.create_experiment(self.experiment)
        elif experiment is None:
            Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
            experiment_id = mlflow.create_experiment(self.experiment, artifact_location=Path(self.artifact_root).as_uri())
        else:
            experiment_id = experiment.experiment_id
        # without it MLflow 3 opens the experiment as a GenAI one
        if (experiment is None or EXPERIMENT_KIND_TAG not in experiment.tags):
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id

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
