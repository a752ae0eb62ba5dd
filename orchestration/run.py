"""`make run`: materialise the whole asset graph once against the persistent DAGSTER_HOME.

params `automation.executor` chooses how: `in_process` (one process, the default) or
`multiprocess` (each stage in its own process; stages whose inputs are ready run at once,
at most `automation.max_concurrent`). The multiprocess executor needs a persistent instance:
DAGSTER_HOME's dagster.yaml (SQLite, or PostgreSQL with orchestration/postgres/dagster.yaml).

Ends by printing where the evaluation report is and which registry version is the champion.
"""
from __future__ import annotations

import sys

import dagster as dg
from mlflow import MlflowClient

from sid_models.serving.registry import aliased_version

from .definitions import RESOURCES, resolved_pipeline_job

EXECUTORS = ("in_process", "multiprocess")
# INFO, not Dagster's DEBUG event stream: the log then reads as the stages' progress
LOGGERS = {"console": {"config": {"log_level": "INFO"}}}


def run_summary(result: dg.ExecuteInProcessResult, params: dict, tracking_uri: str) -> list[str]:
    """Lines saying where the report is, what this run registered and what the champion is now."""
    metadata = {event.asset_key.to_user_string(): event.materialization.metadata
                for event in result.get_asset_materialization_events()}
    lines = []
    if "eval_report" in metadata:
        report = metadata["eval_report"]["report_html"].value
        lines.append(f"report: {report} (also report.md and metrics.json beside it)")
    else:
        lines.append("report: not written (eval_report did not materialise)")
    registry = params["registry"]
    if "registered_model" in metadata:
        registered = metadata["registered_model"]
        lines.append(f"registered: models:/{registry['model_name']}/{registered['version'].value} -> "
                     f"{registered['decision'].value} ({registered['reason'].value})")
    champion = aliased_version(MlflowClient(tracking_uri=tracking_uri), registry["model_name"],
                               registry["champion_alias"])
    lines.append(f"champion: models:/{registry['model_name']}@{registry['champion_alias']} = version "
                 f"{champion.version}" if champion is not None else "champion: none registered yet")
    return lines


def execute(instance: dg.DagsterInstance, params: dict,
            asset_selection: list[dg.AssetKey] | None = None) -> dg.ExecutionResult:
    """Run the pipeline job (or `asset_selection` of it) with the executor params name; the
    multiprocess result must be read inside `instance`'s lifetime."""
    settings = params["automation"]
    if settings["executor"] not in EXECUTORS:
        raise ValueError(f"automation.executor must be one of {EXECUTORS}, got {settings['executor']!r}")
    if settings["executor"] == "in_process":
        return resolved_pipeline_job().execute_in_process(instance=instance, raise_on_error=False,
                                                               run_config={"loggers": LOGGERS},
                                                               asset_selection=asset_selection)
    limit = int(settings["max_concurrent"])
    if limit < 1:
        raise ValueError(f"automation.max_concurrent must be >= 1, got {limit}")
    run_config = {"loggers": LOGGERS, "execution": {"config": {"multiprocess": {"max_concurrent": limit}}}}
    with dg.execute_job(dg.reconstructable(resolved_pipeline_job), instance=instance, run_config=run_config,
                        asset_selection=asset_selection) as result:
        return result


def main() -> int:
    params = RESOURCES["params"].load()
    with dg.DagsterInstance.get() as instance:
        result = execute(instance, params)
    for event in result.get_asset_materialization_events():
        print(f"materialised {event.asset_key.to_user_string()}", file=sys.stderr)
    failed = [evaluation for evaluation in result.get_asset_check_evaluations() if not evaluation.passed]
    for evaluation in failed:
        print(f"check failed: {evaluation.asset_key.to_user_string()}:{evaluation.check_name}", file=sys.stderr)
    tracking_uri = RESOURCES["mlflow_tracking"].tracking_uri
    for line in run_summary(result, params, tracking_uri):
        print(line)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
