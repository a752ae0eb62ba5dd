"""The scale-out path: Dagster on PostgreSQL and a tracked stage against a real `mlflow server` on PostgreSQL.

Both servers are real and started here (tests/servers.py). Without PostgreSQL's server
binaries the tests skip with the command that installs them; `.ci/run` installs them.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from orchestration.resources import DAGSTER_RUN_TAG, MlflowTracking
from orchestration.run import execute
from orchestration.stage_asset import ARTIFACT_ROOT
from sid_models.serving.pyfunc import ServingLimits, log_searcher_model
from sid_models.serving.registry import aliased_version, promote
from sid_models.serving.server import post_json, scoring_server
from sid_models.params import PARAMS_ENV, REPO_ROOT, deep_merge
from servers import mlflow_server, postgres_server, query, why_no_postgres

pytestmark = pytest.mark.skipif(why_no_postgres() is not None, reason=str(why_no_postgres()))

DATA_STAGES = ("raw_dataset", "prepared_dataset", "segment_stats")
CHECKS = {"raw_dataset_expectations", "split_expectations", "segments_from_training_only", "segments_not_degenerate"}
MLFLOW_START_S = 180


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A PostgreSQL server with databases `dagster` and `mlflow`, and an `mlflow server` whose
    backend store is the `mlflow` database; artifacts are served from a folder of its own."""
    tmp = tmp_path_factory.mktemp("servers")
    with postgres_server(("dagster", "mlflow")) as base:
        # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3; the pinned driver is psycopg2
        backend = f"{base}/mlflow".replace("postgresql://", "postgresql+psycopg2://")
        served = tmp / "served_artifacts"
        with mlflow_server(backend, served, tmp / "mlflow_server.log", MLFLOW_START_S) as tracking_uri:
            yield {"postgres": base, "tracking_uri": tracking_uri, "served": served}


@pytest.fixture(scope="module")
def scaled_out_run(servers, small_params, tmp_path_factory):
    """The data assets run by `make run`'s code (orchestration.run.execute) with the multiprocess
    executor on the Postgres instance of orchestration/postgres/dagster.yaml, tracked by the MLflow
    server on the same PostgreSQL server. The step processes find the params and the tracking
    server through the environment alone, as a deployment's would."""
    tmp = tmp_path_factory.mktemp("scale_out")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "orchestration" / "postgres" / "dagster.yaml", home / "dagster.yaml")
    params = deep_merge(small_params, {"eval": {"reports_dir": str(tmp / "reports")},
                                       "automation": {"executor": "multiprocess", "max_concurrent": 2}})
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    postgres, tracking_uri = servers["postgres"], servers["tracking_uri"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_POSTGRES_URL", f"{postgres}/dagster".replace("postgresql://", "postgresql+psycopg2://"))
        patch.setenv(PARAMS_ENV, str(params_file))
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            result = execute(instance, params, [dg.AssetKey(stage) for stage in DATA_STAGES])
            stored = {"storage": type(instance.run_storage).__name__,
                      "run": instance.get_run_by_id(result.run_id),
                      "latest": instance.get_latest_materialization_event(dg.AssetKey("prepared_dataset")),
                      "step_pids": [event.pid for event in result.all_events if event.is_step_start]}
    # read back through nothing but the server's URL
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(MlflowTracking().experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{DAGSTER_RUN_TAG}` = '{result.run_id}'")
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    downloaded = Path(client.download_artifacts(parent.info.run_id, "checks/raw_dataset.json", str(tmp)))
    yield {"result": result, "stored": stored, "runs": runs, "parent": parent, "downloaded": downloaded,
           "served": servers["served"], "postgres": postgres, "home": home}
    for stage in DATA_STAGES:
        shutil.rmtree(ARTIFACT_ROOT / stage / result.run_id, ignore_errors=True)


def test_the_data_assets_materialise_on_a_postgres_backed_dagster_instance(scaled_out_run):
    result, stored = scaled_out_run["result"], scaled_out_run["stored"]
    assert result.success
    assert all(evaluation.passed for evaluation in result.get_asset_check_evaluations())
    assert stored["storage"] == "PostgresRunStorage"
    # the multiprocess executor: every stage in a process of its own, none in the test's
    pids = stored["step_pids"]
    assert len(pids) >= len(DATA_STAGES) and len(set(pids)) == len(pids) and os.getpid() not in pids
    assert {evaluation.check_name for evaluation in result.get_asset_check_evaluations()} == CHECKS
    assert stored["run"].is_success and stored["latest"].run_id == result.run_id
    # the history is in the database itself, not in DAGSTER_HOME
    assert query(f"{scaled_out_run['postgres']}/dagster",
                 f"SELECT status FROM runs WHERE run_id = '{result.run_id}'") == [("SUCCESS",)]
    materialised = query(f"{scaled_out_run['postgres']}/dagster",
                         "SELECT DISTINCT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
    assert {key for (key,) in materialised} == {f'["{stage}"]' for stage in DATA_STAGES}
    assert not any(path.suffix == ".db" for path in scaled_out_run["home"].rglob("*"))


def test_the_stages_are_tracked_by_an_mlflow_server_on_postgres(scaled_out_run):
    runs, parent = scaled_out_run["runs"], scaled_out_run["parent"]
    children = {run.data.tags["stage"]: run for run in runs
                if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(DATA_STAGES)
    assert children["raw_dataset"].data.metrics["n_items"] == 400
    # runs live in the server's PostgreSQL backend store; artifacts went through the server to its destination
    stored_runs = {run_id for (run_id,) in query(f"{scaled_out_run['postgres']}/mlflow", "SELECT run_uuid FROM runs")}
    assert {run.info.run_id for run in runs} <= stored_runs
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert scaled_out_run["downloaded"].is_file() and scaled_out_run["downloaded"].stat().st_size > 0
    assert any(path.name == "raw_dataset.json" for path in scaled_out_run["served"].rglob("*"))


@pytest.mark.timeout(400)
def test_registry_promotion_and_serving_work_against_the_server_by_its_url(servers, small_params, small_prepared,
                                                                           small_stage_folders, tmp_path):
    tracking_uri, name = servers["tracking_uri"], "sid-retrieval-server-test"
    params = deep_merge(small_params, {"registry": {"model_name": name}})
    client = MlflowClient(tracking_uri=tracking_uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment = mlflow.create_experiment("registry-on-server")       # artifacts: the server's
        with mlflow.start_run(experiment_id=experiment):
            info = log_searcher_model("sid_models.eval.systems:load_minilm", small_stage_folders,
                                      {"prepared_folder": "prepared_dataset", "embeddings_folder": "text_embeddings"},
                                      ServingLimits.from_params(params["serving"]), ["cordless drill"],
                                      loader_kwargs={"text_params": params["text"]}, registered_model_name=name)
            decision = promote(client, name, info.registered_model_version, small_prepared, params)
    finally:
        mlflow.set_tracking_uri(previous)
    assert decision.promote, decision
    champion = aliased_version(client, name, params["registry"]["champion_alias"])
    assert champion is not None and str(champion.version) == str(info.registered_model_version)
    model_uri = f"models:/{name}@{params['registry']['champion_alias']}"
    with scoring_server(model_uri, tracking_uri, 240, tmp_path / "scoring.log") as url:
        status, body = post_json(url, json.dumps({"inputs": ["steel hammer"], "params": {"k": 3}}), timeout=60)
    assert status == 200, body
    assert len(body["predictions"][0]["item_ids"]) == 3
    assert set(body["predictions"][0]["item_ids"]) <= set(small_prepared.items["item_id"])
