"""Data assets: the validated, split dataset."""
import dagster as dg

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import materialize_stage


@dg.asset(group_name="data", description="Dataset selected in params.yaml, validated, split by query, items segmented by training exposure.")
def prepared_dataset(context: dg.AssetExecutionContext, params: ParamsResource,
                     mlflow_tracking: MlflowTracking) -> dg.Output[str]:
    return materialize_stage(context, "prepared_dataset", {}, params, mlflow_tracking)
