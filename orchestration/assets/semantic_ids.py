"""Semantic-ID assets: ACRQ stage A codebooks, stage B codes, SID tables (SARQ and TIGER), with checks."""
import json
from pathlib import Path

import dagster as dg

from sid_models.data.schema import PreparedDataset
from sid_models.quantize import checks
from sid_models.quantize.stage import HEALTH_FILE
from sid_models.quantize.table import load_sid_table

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import materialize_stage


@dg.asset(group_name="semantic_ids",
          description="ACRQ stage A: level 1 = SCI coarse cells, levels 2..L = residual k-means of head items' "
                      "item view weighted by exposure; frozen.")
def sarq_codebooks(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                   prepared_dataset: str, sci_towers: str, sci_index: str) -> dg.Output[str]:
    return materialize_stage(context, "sarq_codebooks", {"prepared_dataset": prepared_dataset,
                                                         "sci_towers": sci_towers, "sci_index": sci_index},
                             params, mlflow_tracking)


@dg.asset(group_name="semantic_ids",
          description="ACRQ stage B: identity-initialised adapter through the torso -> tail -> cold curriculum "
                      "against the frozen codebooks; full codes of every item.")
def acrq_tail_codes(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                    prepared_dataset: str, sci_towers: str, sci_index: str, sarq_codebooks: str) -> dg.Output[str]:
    return materialize_stage(context, "acrq_tail_codes", {"prepared_dataset": prepared_dataset,
                                                          "sci_towers": sci_towers, "sci_index": sci_index,
                                                          "sarq_codebooks": sarq_codebooks},
                             params, mlflow_tracking)


@dg.asset(group_name="semantic_ids",
          description="SID tables: SARQ adaptive lengths over the ACRQ codes (sids.parquet) and the TIGER-style "
                      "fixed-length baseline (tiger_sids.parquet), vocab.json, codebook health.")
def semantic_ids(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                 prepared_dataset: str, sci_towers: str, sci_index: str, sarq_codebooks: str,
                 acrq_tail_codes: str) -> dg.Output[str]:
    return materialize_stage(context, "semantic_ids", {"prepared_dataset": prepared_dataset, "sci_towers": sci_towers,
                                                       "sci_index": sci_index, "sarq_codebooks": sarq_codebooks,
                                                       "acrq_tail_codes": acrq_tail_codes},
                             params, mlflow_tracking)


def _result(outcome: checks.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=outcome.passed, description=outcome.description,
                               metadata={key: dg.MetadataValue.json(value) if isinstance(value, (dict, list)) else value
                                         for key, value in outcome.metadata.items()})


@dg.asset_check(asset=acrq_tail_codes, blocking=True,
                description="No quantizer level of the ACRQ codes uses fewer codes than quantize.min_utilisation.")
def acrq_level_utilisation(acrq_tail_codes: str, params: ParamsResource) -> dg.AssetCheckResult:
    health = json.loads((Path(acrq_tail_codes) / HEALTH_FILE).read_text())
    return _result(checks.level_utilisation(health, params.load()["quantize"]["min_utilisation"]))


@dg.asset_check(asset=semantic_ids, blocking=True, additional_ins={"prepared_dataset": dg.AssetIn()},
                description="Every catalogue item has exactly one SID, in both variants.")
def every_item_one_sid(semantic_ids: str, prepared_dataset: str) -> dg.AssetCheckResult:
    item_ids = PreparedDataset.load(prepared_dataset).items["item_id"]
    outcomes = {variant: checks.every_item_one_sid(load_sid_table(semantic_ids, variant), item_ids)
                for variant in ("sarq_acrq", "tiger")}
    return dg.AssetCheckResult(passed=all(outcome.passed for outcome in outcomes.values()),
                               description="every catalogue item has exactly one SID (sarq_acrq and tiger)",
                               metadata={variant: dg.MetadataValue.json(outcome.metadata)
                                         for variant, outcome in outcomes.items()})


@dg.asset_check(asset=semantic_ids, blocking=True, description="No head item shares its SARQ SID.")
def head_sids_collision_free(semantic_ids: str) -> dg.AssetCheckResult:
    return _result(checks.head_collision_free(load_sid_table(semantic_ids, "sarq_acrq")))


@dg.asset_check(asset=semantic_ids, blocking=True, description="Mean SARQ SID length: head > tail.")
def head_sids_longer_than_tail(semantic_ids: str) -> dg.AssetCheckResult:
    return _result(checks.head_longer_than_tail(load_sid_table(semantic_ids, "sarq_acrq")))


@dg.asset_check(asset=semantic_ids, blocking=True,
                description="No quantizer level of the TIGER baseline uses fewer codes than quantize.min_utilisation.")
def tiger_level_utilisation(semantic_ids: str, params: ParamsResource) -> dg.AssetCheckResult:
    health = json.loads((Path(semantic_ids) / HEALTH_FILE).read_text())
    return _result(checks.level_utilisation(health["tiger"]["codes"], params.load()["quantize"]["min_utilisation"]))
