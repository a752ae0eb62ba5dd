"""Data assets: raw dataset -> validated splits -> segment statistics, with their checks.

The Great Expectations suites run as blocking checks: a failed suite stops every asset
downstream of the checked one. Each suite's summary is also logged to the Dagster run's
MLflow parent run (checks/<asset>.json).
"""
import json
from pathlib import Path

import dagster as dg
import mlflow

from sid_models.data.expectations import split_suites, table_suites
from sid_models.data.loaders import load_parquet_layout
from sid_models.data.schema import SEGMENTS, PreparedDataset
from sid_models.data.stage import SEGMENT_STATS_FILE
from sid_models.data.stats import recount_exposure

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import materialize_stage


@dg.asset(group_name="data", description="The dataset params.yaml selects (dataset.kind/path), loaded into the "
          "canonical tables and validated against the data contract.")
def raw_dataset(context: dg.AssetExecutionContext, params: ParamsResource,
                mlflow_tracking: MlflowTracking) -> dg.Output[str]:
    return materialize_stage(context, "raw_dataset", {}, params, mlflow_tracking)


@dg.asset(group_name="data", description="Validated dataset split by query (salted hash), items segmented "
          "head/torso/tail/cold by training exposure.")
def prepared_dataset(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                     raw_dataset: str) -> dg.Output[str]:
    return materialize_stage(context, "prepared_dataset", {"raw_dataset": raw_dataset}, params, mlflow_tracking)


@dg.asset(group_name="data", description="Segment sizes, exposure distribution, segments of relevant pairs per split.")
def segment_stats(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                  prepared_dataset: str) -> dg.Output[str]:
    return materialize_stage(context, "segment_stats", {"prepared_dataset": prepared_dataset}, params,
                             mlflow_tracking)


@dg.asset_check(asset=raw_dataset, blocking=True,
                description="GX suites items/queries/judgments: unique non-null ids, non-empty decodable text, "
                            "labels on the scale, judgments point at known items and queries.")
def raw_dataset_expectations(context: dg.AssetCheckExecutionContext, params: ParamsResource,
                             mlflow_tracking: MlflowTracking, raw_dataset: str) -> dg.AssetCheckResult:
    reports = table_suites(load_parquet_layout(raw_dataset), params.load()["validation"]["max_error_examples"])
    return _suite_result(context, mlflow_tracking, "raw_dataset", reports)


@dg.asset_check(asset=prepared_dataset, blocking=True,
                description="GX suites on the splits: each query in exactly one split, judgments in their "
                            "query's split, no query text in two splits, relevant flag, segments table.")
def split_expectations(context: dg.AssetCheckExecutionContext, params: ParamsResource,
                       mlflow_tracking: MlflowTracking, prepared_dataset: str) -> dg.AssetCheckResult:
    reports = split_suites(PreparedDataset.load(prepared_dataset), params.load()["validation"]["max_error_examples"])
    return _suite_result(context, mlflow_tracking, "prepared_dataset", reports)


@dg.asset_check(asset=prepared_dataset, blocking=True,
                description="Exposure equals the relevant training judgments recounted (test and valid never "
                            "add popularity) and each segment follows the thresholds in params.segments.")
def segments_from_training_only(params: ParamsResource, prepared_dataset: str) -> dg.AssetCheckResult:
    prepared = PreparedDataset.load(prepared_dataset)
    thresholds = params.load()["segments"]
    recounted = recount_exposure(prepared).to_numpy()
    exposure = prepared.segments.set_index("item_id").loc[prepared.items["item_id"], "exposure"].to_numpy()
    segment = prepared.segments.set_index("item_id").loc[prepared.items["item_id"], "segment"].to_numpy()
    expected = [("head", exposure >= thresholds["head_min_exposure"]),
                ("torso", (exposure >= thresholds["torso_min_exposure"]) & (exposure < thresholds["head_min_exposure"])),
                ("tail", (exposure >= 1) & (exposure < thresholds["torso_min_exposure"])),
                ("cold", exposure == 0)]
    wrong_segment = sum(int(((segment == name) != mask).sum()) for name, mask in expected)
    wrong_exposure = int((recounted != exposure).sum())
    return dg.AssetCheckResult(passed=wrong_exposure == 0 and wrong_segment == 0,
                               metadata={"items_with_wrong_exposure": wrong_exposure,
                                         "items_in_wrong_segment": wrong_segment})


@dg.asset_check(asset=segment_stats, blocking=False,
                description="Every segment holds items and at least one relevant test pair is on a seen item "
                            "(a warning: the thresholds in params.segments may need tuning for this dataset).")
def segments_not_degenerate(segment_stats: str) -> dg.AssetCheckResult:
    stats = json.loads((Path(segment_stats) / SEGMENT_STATS_FILE).read_text())
    empty = [segment for segment in SEGMENTS if stats[f"n_items_{segment}"] == 0]
    passed = not empty and stats["share_relevant_test_seen"] > 0
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"empty_segments": ", ".join(empty) or "none",
                                         **{f"n_items_{segment}": stats[f"n_items_{segment}"] for segment in SEGMENTS},
                                         "share_relevant_test_cold": stats["share_relevant_test_cold"]})


def _suite_result(context: dg.AssetCheckExecutionContext, mlflow_tracking: MlflowTracking, asset: str,
                  reports: list) -> dg.AssetCheckResult:
    summaries = {report.suite: report.summary() for report in reports}
    parent = mlflow_tracking.parent_run_id(context.run.run_id, context.run.job_name)
    mlflow.MlflowClient().log_dict(parent, summaries, f"checks/{asset}.json")
    failed = [f"{report.suite}: {outcome.expectation}({outcome.column}) x{outcome.unexpected_count} "
              f"e.g. {outcome.examples}" for report in reports for outcome in report.failures()]
    return dg.AssetCheckResult(
        passed=not failed,
        description="; ".join(failed) if failed else f"{sum(len(report.outcomes) for report in reports)} expectations passed",
        metadata={f"{suite}_failed": len(summary["failed"]) for suite, summary in summaries.items()}
        | {"suites": dg.MetadataValue.json(summaries)},
    )
