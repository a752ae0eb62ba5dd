"""Alignment asset: the RAD-DPO checkpoint (with the vanilla DPO baseline inside), and its checks."""
import dagster as dg

from sid_models.align.stage import check_ndcg_vs_sft, check_valid_sids, read_validation

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import check_result, materialize_stage


@dg.asset(group_name="alignment",
          description="RAD-DPO (TLGD + RDRW + MLGC) aligned retriever from the SFT checkpoint, same layout; "
                      "vanilla_dpo/ holds the vanilla pairwise DPO baseline; preferences.parquet the mined pairs.")
def dpo_checkpoint(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                   prepared_dataset: str, sci_towers: str, sci_index: str, semantic_ids: str,
                   sft_checkpoint: str) -> dg.Output[str]:
    return materialize_stage(context, "dpo_checkpoint",
                             {"prepared_dataset": prepared_dataset, "sci_towers": sci_towers, "sci_index": sci_index,
                              "semantic_ids": semantic_ids, "sft_checkpoint": sft_checkpoint},
                             params, mlflow_tracking)


@dg.asset_check(asset=dpo_checkpoint, blocking=True,
                description="Aligned checkpoints decode 100 % valid SIDs on the validation queries.")
def dpo_valid_sids(dpo_checkpoint: str) -> dg.AssetCheckResult:
    return check_result(check_valid_sids(read_validation(dpo_checkpoint)))


@dg.asset_check(asset=dpo_checkpoint, blocking=True,
                description="Validation NDCG@10 of RAD-DPO not below SFT's by more than align.checks.valid_ndcg_tolerance.")
def dpo_ndcg_not_below_sft(dpo_checkpoint: str, params: ParamsResource) -> dg.AssetCheckResult:
    return check_result(check_ndcg_vs_sft(read_validation(dpo_checkpoint),
                                          float(params.load()["align"]["checks"]["valid_ndcg_tolerance"])))
