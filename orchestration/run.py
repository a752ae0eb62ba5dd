"""`make run`: materialise the whole asset graph once, in process, against the persistent DAGSTER_HOME.

Ends by printing where the evaluation report is and which registry version is the champion.
"""
from __future__ import annotations

import sys

import dagster as dg
from mlflow import MlflowClient

from sid_models.serving.registry import aliased_version

from .definitions import RESOURCES, defs


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


def main() -> int:
    with dg.DagsterInstance.get() as instance:
        # INFO, not Dagster's DEBUG event stream: the log then reads as the stages' progress
        result = defs.get_job_def("pipeline").execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
    for event in result.get_asset_materialization_events():
        print(f"materialised {event.asset_key.to_user_string()}", file=sys.stderr)
    failed = [evaluation for evaluation in result.get_asset_check_evaluations() if not evaluation.passed]
    for evaluation in failed:
        print(f"check failed: {evaluation.asset_key.to_user_string()}:{evaluation.check_name}", file=sys.stderr)
    tracking_uri = RESOURCES["mlflow_tracking"].tracking_uri
    for line in run_summary(result, RESOURCES["params"].load(), tracking_uri):
        print(line)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
