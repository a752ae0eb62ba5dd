"""The stage runner: outputs appear whole or not at all, and orphaned MLflow runs are closed."""
from __future__ import annotations

import subprocess

import mlflow
import pytest

from sid_models import stage_runner
from sid_models.stage_runner import close_orphan_runs, replace_folder, run_tags, write_stage


def _folder(path, text):
    path.mkdir()
    (path / "content.txt").write_text(text)
    return path


def test_replace_folder_swaps_in_the_new_output_and_removes_the_old(tmp_path):
    final = _folder(tmp_path / "stage", "old")
    replace_folder(_folder(tmp_path / "stage.partial", "new"), final)
    assert (final / "content.txt").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["stage"]


def test_the_exchange_is_atomic_where_the_kernel_offers_it(tmp_path):
    first, second = _folder(tmp_path / "a", "a"), _folder(tmp_path / "b", "b")
    if not stage_runner._exchange(first, second):
        pytest.skip("this filesystem has no RENAME_EXCHANGE")
    assert (first / "content.txt").read_text() == "b" and (second / "content.txt").read_text() == "a"


def test_replace_folder_without_an_atomic_exchange_still_ends_with_the_new_output(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_runner, "_exchange", lambda a, b: False)
    final = _folder(tmp_path / "stage", "old")
    replace_folder(_folder(tmp_path / "stage.partial", "new"), final)
    assert (final / "content.txt").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["stage"]


def test_a_failing_stage_leaves_the_previous_output_and_no_partial_folder(tmp_path, small_params):
    final = _folder(tmp_path / "raw_dataset", "previous")
    (tmp_path / "raw_dataset.partial").mkdir()                      # left by a killed earlier run
    broken = {**small_params, "dataset": {**small_params["dataset"], "kind": "parquet",
                                          "path": str(tmp_path / "missing")}}
    with pytest.raises(Exception):
        write_stage("raw_dataset", broken, {}, final)
    assert (final / "content.txt").read_text() == "previous"
    assert not (tmp_path / "raw_dataset.partial").exists()
    metadata = write_stage("raw_dataset", small_params, {}, final)
    assert not (final / "content.txt").exists() and (final / "items.parquet").is_file() and metadata


def test_runs_left_running_by_a_dead_process_are_marked_killed(tmp_path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("orphans", artifact_location=(tmp_path / "artifacts").as_uri())
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    orphan = client.create_run(experiment, tags={"stage": "sci_towers", **run_tags(),
                                                 stage_runner.PID_TAG: str(dead_pid.pid)})
    alive = client.create_run(experiment, tags={"stage": "sci_towers", **run_tags()})
    other_stage = client.create_run(experiment, tags={"stage": "sci_index", **run_tags(),
                                                      stage_runner.PID_TAG: str(dead_pid.pid)})
    assert close_orphan_runs(client, experiment, "sci_towers") == [orphan.info.run_id]
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(other_stage.info.run_id).info.status == "RUNNING"
