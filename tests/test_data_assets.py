"""Real in-process Dagster materialisation of the data assets and their checks, tracked in MLflow."""
from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import yaml

from orchestration.assets import data as data_assets
from orchestration.resources import DAGSTER_RUN_TAG, MlflowTracking, ParamsResource
from orchestration.stage_asset import ARTIFACT_ROOT
from sid_models.params import deep_merge

DATA_STAGES = ("raw_dataset", "prepared_dataset", "segment_stats")
CHECKS = {"raw_dataset_expectations", "split_expectations", "segments_from_training_only", "segments_not_degenerate"}


def _materialize(tmp: Path, params: dict) -> tuple[dg.ExecuteInProcessResult, str]:
    params_file = tmp / "params.yaml"
    # published metrics (reports/segment_stats.json) land in the test's folder, not the repository's
    params = deep_merge(params, {"eval": {"reports_dir": str(tmp / "reports")}})
    params_file.write_text(yaml.safe_dump(params))
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # the same resource classes as orchestration.definitions.RESOURCES, pointed at temporary stores
    resources = {"params": ParamsResource(path=str(params_file)),
                 "mlflow_tracking": MlflowTracking(tracking_uri=tracking_uri, artifact_root=str(tmp / "artifacts"))}
    result = dg.materialize([*dg.load_assets_from_modules([data_assets]),
                             *dg.load_asset_checks_from_modules([data_assets])],
                            resources=resources, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    return result, tracking_uri


def _artifact_folders(run_id: str) -> list[Path]:
    return [folder for stage in DATA_STAGES for folder in (ARTIFACT_ROOT / stage / run_id,
                                                            ARTIFACT_ROOT / stage / f"{run_id}.partial")]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, small_params):
    tmp = tmp_path_factory.mktemp("dagster_demo")
    result, tracking_uri = _materialize(tmp, small_params)
    yield result, tracking_uri
    for folder in _artifact_folders(result.run_id):
        shutil.rmtree(folder, ignore_errors=True)


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def test_data_assets_materialise_with_versioned_artifacts(demo_run):
    result, _ = demo_run
    assert result.success
    for stage in DATA_STAGES:
        folder = Path(result.output_for_node(stage))
        assert folder == ARTIFACT_ROOT / stage / result.run_id and folder.is_dir()
        materialization = result.asset_materializations_for_node(stage)[0]
        assert len(materialization.metadata["sha256"].value) == 64
    assert (Path(result.output_for_node("prepared_dataset")) / "segments.parquet").is_file()
    assert (Path(result.output_for_node("segment_stats")) / "segment_stats.json").is_file()


def test_every_data_check_runs_and_passes(demo_run):
    result, _ = demo_run
    checks = _checks(result)
    assert set(checks) == CHECKS
    assert all(check.passed for check in checks.values()), {name: check.metadata for name, check in checks.items()}
    assert checks["raw_dataset_expectations"].metadata["judgments_failed"].value == 0


def test_expectation_checks_are_blocking():
    blocking = {spec.name: spec.blocking
                for checks in dg.load_asset_checks_from_modules([data_assets]) for spec in checks.check_specs}
    assert blocking == {"raw_dataset_expectations": True, "split_expectations": True,
                        "segments_from_training_only": True, "segments_not_degenerate": False}


def test_mlflow_parent_run_is_tagged_with_the_dagster_run_id(demo_run):
    result, tracking_uri = demo_run
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(MlflowTracking().experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{DAGSTER_RUN_TAG}` = '{result.run_id}'")
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    children = {run.data.tags["stage"]: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == set(DATA_STAGES)
    assert children["raw_dataset"].data.metrics["n_items"] == 400
    artifacts = {entry.path for entry in client.list_artifacts(parents[0].info.run_id, "checks")}
    assert artifacts == {"checks/raw_dataset.json", "checks/prepared_dataset.json"}


def test_bad_input_fails_the_raw_dataset_and_writes_nothing(tmp_path, small_params):
    store = tmp_path / "store"
    shutil.copytree(Path(__file__).parent / "fixtures" / "wands", store)
    label = store / "label.csv"
    label.write_text(label.read_text().replace("\t3\t3\tIrrelevant", "\t3\t99\tIrrelevant"))
    params = deep_merge(small_params, {"dataset": {"kind": "wands", "path": str(store)}})
    result, _ = _materialize(tmp_path, params)
    assert not result.success
    failure = result.failure_data_for_node("raw_dataset")
    assert "unknown item '99'" in failure.error.cause.message and "label.csv, row 4" in failure.error.cause.message
    assert not any(folder.exists() for folder in _artifact_folders(result.run_id))
    assert not result.get_asset_materialization_events()


@pytest.mark.slow
@pytest.mark.realdata
def test_data_assets_on_home_depot(tmp_path, small_params, home_depot_path):
    params = deep_merge(small_params, {"dataset": {"kind": "home_depot", "path": str(home_depot_path)}})
    result, _ = _materialize(tmp_path, params)
    try:
        assert result.success
        checks = _checks(result)
        assert set(checks) == CHECKS and all(check.passed for check in checks.values())
        stats = result.asset_materializations_for_node("segment_stats")[0].metadata
        assert stats["n_items"].value == 54667
    finally:
        for folder in _artifact_folders(result.run_id):
            shutil.rmtree(folder, ignore_errors=True)
