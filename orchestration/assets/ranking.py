"""Ranking asset: the LightGBM rankers of the decoded pool (gr_sarq_acrq) and of the hybrid union."""
import json
from pathlib import Path

import dagster as dg

from sid_models.ranking.stage import SUMMARY_FILE

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import materialize_stage


@dg.asset(group_name="generative",
          description="LightGBM lambdarank models trained on the validation split: pool/ ranks the items of the top "
                      "decoded SIDs (the shipped generative system), hybrid/ the pool ∪ BM25 ∪ dense candidates.")
def ranker(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
           prepared_dataset: str, text_embeddings: str, sci_index: str, semantic_ids: str,
           sft_checkpoint: str) -> dg.Output[str]:
    return materialize_stage(context, "ranker",
                             {"prepared_dataset": prepared_dataset, "text_embeddings": text_embeddings,
                              "sci_index": sci_index, "semantic_ids": semantic_ids, "sft_checkpoint": sft_checkpoint},
                             params, mlflow_tracking)


@dg.asset_check(asset=ranker, blocking=True,
                description="Every configured ranker was trained and ranks its held-out validation folds "
                            "with a positive NDCG@10.")
def ranker_cross_validated(ranker: str, params: ParamsResource) -> dg.AssetCheckResult:
    expected = list(params.load()["ranker"]["systems"])
    summary = json.loads((Path(ranker) / SUMMARY_FILE).read_text())
    scores = {system: summary[system]["cv_ndcg@10"] for system in expected if system in summary}
    passed = len(scores) == len(expected) and all(score > 0 for score in scores.values())
    return dg.AssetCheckResult(passed=passed, metadata={f"{system}_cv_ndcg@10": score
                                                        for system, score in scores.items()} | {"missing": str(
                                                            [system for system in expected if system not in summary])})
