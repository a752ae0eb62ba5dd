"""Weekly retraining schedule and dataset-version sensor, evaluated with Dagster's test utilities."""
from __future__ import annotations

import datetime

import dagster as dg
import yaml

from orchestration.resources import ParamsResource
from orchestration.schedules import PIPELINE_JOB, weekly_retraining_schedule
from orchestration.sensors import dataset_version_sensor
from sid_models.params import deep_merge


def test_schedule_requests_a_pipeline_run_on_the_cron_from_params(small_params):
    automation = deep_merge(small_params["automation"], {"retrain_cron": "30 4 * * 2"})
    schedule = weekly_retraining_schedule(automation)
    assert schedule.cron_schedule == "30 4 * * 2"
    assert schedule.job_name == PIPELINE_JOB
    assert schedule.execution_timezone == automation["timezone"]
    tick = datetime.datetime(2026, 11, 24, 4, 30, tzinfo=datetime.timezone.utc)
    result = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=tick))
    assert len(result.run_requests) == 1
    assert result.run_requests[0].tags["trigger"] == "schedule"


def _tracked_dataset(tmp_path, small_params, md5: str):
    """A parquet dataset folder with the `.dvc` pointer `dvc add` writes next to it."""
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    (tmp_path / "store.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": "store"}]}))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(deep_merge(small_params, {"dataset": {"kind": "parquet",
                                                                                 "path": str(store)}})))
    return ParamsResource(path=str(params_file))


def test_sensor_records_the_first_version_then_requests_retraining_on_change(tmp_path, small_params):
    params = _tracked_dataset(tmp_path, small_params, "1111.dir")
    context = dg.build_sensor_context(cursor=None, resources={"params": params})
    first = dataset_version_sensor(context)
    assert isinstance(first, dg.SkipReason) and "1111.dir" in first.skip_message
    assert context.cursor == "1111.dir"

    unchanged = dataset_version_sensor(dg.build_sensor_context(cursor=context.cursor, resources={"params": params}))
    assert isinstance(unchanged, dg.SkipReason) and "unchanged" in unchanged.skip_message

    _tracked_dataset(tmp_path, small_params, "2222.dir")
    context = dg.build_sensor_context(cursor="1111.dir", resources={"params": params})
    request = dataset_version_sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == "dataset-2222.dir"
    assert request.tags["dataset_version"] == "2222.dir" and request.tags["previous_version"] == "1111.dir"
    assert context.cursor == "2222.dir"



def test_schedule_and_sensor_start_stopped_so_opening_the_ui_arms_nothing(small_params):
    assert weekly_retraining_schedule(small_params["automation"]).default_status == dg.DefaultScheduleStatus.STOPPED
    assert dataset_version_sensor.default_status == dg.DefaultSensorStatus.STOPPED
