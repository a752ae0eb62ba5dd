"""Retrain when the tracked dataset changes: a sensor on the dataset's DVC hash.

The cursor holds the last dataset version seen. The first evaluation only records it (the
data the current models were trained on); every later change requests one pipeline run,
keyed by the new version so the same version never triggers twice.
"""
import dagster as dg

from sid_models.params import load_params

from .resources import ParamsResource
from .schedules import PIPELINE_JOB


@dg.sensor(name="dataset_version_sensor", job_name=PIPELINE_JOB,
           minimum_interval_seconds=int(load_params()["automation"]["sensor_interval_s"]),
           default_status=dg.DefaultSensorStatus.STOPPED,   # turned on in the UI, like the schedule
           description="Requests a retraining run when the DVC hash of the tracked dataset changes.")
def dataset_version_sensor(context: dg.SensorEvaluationContext, params: ParamsResource):
    from sid_models.data.versioning import dataset_version

    version = dataset_version(params.load())
    previous = context.cursor
    if previous == version:
        return dg.SkipReason(f"dataset version unchanged ({version})")
    context.update_cursor(version)
    if previous is None:
        return dg.SkipReason(f"first evaluation: recorded dataset version {version}")
    return dg.RunRequest(run_key=f"dataset-{version}",
                         tags={"trigger": "dataset_change", "dataset_version": version, "previous_version": previous})


sensors = [dataset_version_sensor]
