"""Generative asset: the SFT checkpoint (the shipped SARQ+ACRQ model, the sft.baselines models in subfolders) and its checks."""
import dagster as dg

from sid_models.generative.stage import check_recall_floor, check_valid_sids, read_validation

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import check_result, materialize_stage


@dg.asset(group_name="generative",
          description="Seq2seq generative retriever trained by SFT (query -> SID, item text -> SID) on SARQ+ACRQ "
                      "SIDs; tiger/ holds the same-size TIGER-SID baseline; sci/ the bucket-ranking towers.")
def sft_checkpoint(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                   prepared_dataset: str, sci_towers: str, sci_index: str, semantic_ids: str) -> dg.Output[str]:
    return materialize_stage(context, "sft_checkpoint",
                             {"prepared_dataset": prepared_dataset, "sci_towers": sci_towers, "sci_index": sci_index,
                              "semantic_ids": semantic_ids},
                             params, mlflow_tracking)


@dg.asset_check(asset=sft_checkpoint, blocking=True,
                description="Trie-constrained beam search decodes 100 % valid SIDs on the validation queries.")
def sft_valid_sids(sft_checkpoint: str) -> dg.AssetCheckResult:
    return check_result(check_valid_sids(read_validation(sft_checkpoint)))


@dg.asset_check(asset=sft_checkpoint, blocking=True,
                description="Validation Recall@10 of the shipped variant's model above sft.valid_recall_floor.")
def sft_recall_above_floor(sft_checkpoint: str, params: ParamsResource) -> dg.AssetCheckResult:
    return check_result(check_recall_floor(read_validation(sft_checkpoint),
                                           float(params.load()["sft"]["valid_recall_floor"])))
