"""Weekly retraining: the whole pipeline on a cron from params.yaml `automation`."""
import dagster as dg

from sid_models.params import load_params

PIPELINE_JOB = "pipeline"


def weekly_retraining_schedule(automation: dict) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_retraining",
        job_name=PIPELINE_JOB,
        cron_schedule=automation["retrain_cron"],
        execution_timezone=automation["timezone"],
        tags={"trigger": "schedule"},
        description="Retrain and re-evaluate every stage; the candidate is promoted only if it beats the champion.",
        default_status=dg.DefaultScheduleStatus.STOPPED,   # `make ui` must not arm a weekly full retrain unasked
    )


schedules = [weekly_retraining_schedule(load_params()["automation"])]
