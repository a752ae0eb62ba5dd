"""Semantic-ID assets: ACRQ stage A codebooks, stage B codes, the SID table of every variant, with checks."""
import json
from pathlib import Path

import dagster as dg

from sid_models.data.schema import PreparedDataset
from sid_models.quantize import checks
from sid_models.quantize.stage import HEALTH_FILE
from sid_models.quantize.table import load_sid_table, sid_variants
from sid_models.quantize.variants import variant_rows

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import materialize_stage


@dg.asset(group_name="semantic_ids",
          description="ACRQ stage A: level 1 = SCI coarse cells, levels 2..L = residual k-means of head items' "
                      "item view weighted by exposure; frozen.")
def acrq_codebooks(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                   prepared_dataset: str, sci_towers: str, sci_index: str) -> dg.Output[str]:
    return materialize_stage(context, "acrq_codebooks", {"prepared_dataset": prepared_dataset,
                                                         "sci_towers": sci_towers, "sci_index": sci_index},
                             params, mlflow_tracking)


@dg.asset(group_name="semantic_ids",
          description="ACRQ stage B: identity-initialised adapter through the torso -> tail -> cold curriculum "
                      "against the frozen codebooks; full codes of every item.")
def acrq_codes(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                    prepared_dataset: str, sci_towers: str, sci_index: str, acrq_codebooks: str) -> dg.Output[str]:
    return materialize_stage(context, "acrq_codes", {"prepared_dataset": prepared_dataset,
                                                          "sci_towers": sci_towers, "sci_index": sci_index,
                                                          "acrq_codebooks": acrq_codebooks},
                             params, mlflow_tracking)


@dg.asset(group_name="semantic_ids",
          description="SID tables of every variant of semantic_ids.variants: SARQ adaptive lengths over the ACRQ "
                      "codes (sids.parquet, shipped) and the TIGER-style fixed-length baseline (tiger_sids.parquet), "
                      "vocab.json, codebook health.")
def semantic_ids(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                 prepared_dataset: str, sci_towers: str, sci_index: str, acrq_codebooks: str,
                 acrq_codes: str) -> dg.Output[str]:
    return materialize_stage(context, "semantic_ids", {"prepared_dataset": prepared_dataset, "sci_towers": sci_towers,
                                                       "sci_index": sci_index, "acrq_codebooks": acrq_codebooks,
                                                       "acrq_codes": acrq_codes},
                             params, mlflow_tracking)


def _result(outcome: checks.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=outcome.passed, description=outcome.description,
                               metadata={key: dg.MetadataValue.json(value) if isinstance(value, (dict, list)) else value
                                         for key, value in outcome.metadata.items()})


@dg.asset_check(asset=acrq_codes, blocking=True,
                description="No quantizer level of the ACRQ codes uses fewer codes than quantize.min_utilisation.")
def acrq_level_utilisation(acrq_codes: str, params: ParamsResource) -> dg.AssetCheckResult:
    health = json.loads((Path(acrq_codes) / HEALTH_FILE).read_text())
    return _result(checks.level_utilisation(health, params.load()["quantize"]["min_utilisation"]))


def _every_variant(outcomes: dict[str, checks.CheckOutcome], what: str) -> dg.AssetCheckResult:
    """One check result over the variants it applies to: passed when each variant's passed."""
    failed = [variant for variant, outcome in outcomes.items() if not outcome.passed]
    description = (f"{what}: " + "; ".join(f"{variant}: {outcome.description}" for variant, outcome in outcomes.items())
                   if outcomes else f"{what}: no variant to check")
    return dg.AssetCheckResult(passed=not failed, description=description,
                               metadata={variant: dg.MetadataValue.json(outcome.metadata)
                                         for variant, outcome in outcomes.items()})


def _variants(params: ParamsResource, **wanted: str) -> list[str]:
    """The SID variants of params whose row has the `wanted` settings (codes=..., policy=...)."""
    return [name for name, row in variant_rows(params.load()).items()
            if all(row[key] == value for key, value in wanted.items())]


@dg.asset_check(asset=semantic_ids, blocking=True, additional_ins={"prepared_dataset": dg.AssetIn()},
                description="Every catalogue item has exactly one SID, in every variant.")
def every_item_one_sid(semantic_ids: str, prepared_dataset: str) -> dg.AssetCheckResult:
    item_ids = PreparedDataset.load(prepared_dataset).items["item_id"]
    return _every_variant({variant: checks.every_item_one_sid(load_sid_table(semantic_ids, variant), item_ids)
                           for variant in sid_variants(semantic_ids)}, "every catalogue item has exactly one SID")


@dg.asset_check(asset=semantic_ids, blocking=True, description="No head item shares its SID, in every SARQ variant.")
def head_sids_collision_free(semantic_ids: str, params: ParamsResource) -> dg.AssetCheckResult:
    return _every_variant({variant: checks.head_collision_free(load_sid_table(semantic_ids, variant))
                           for variant in _variants(params, policy="sarq")}, "head SIDs collision-free")


@dg.asset_check(asset=semantic_ids, blocking=True, description="Mean SID length head > tail, in every SARQ variant.")
def head_sids_longer_than_tail(semantic_ids: str, params: ParamsResource) -> dg.AssetCheckResult:
    return _every_variant({variant: checks.head_longer_than_tail(load_sid_table(semantic_ids, variant))
                           for variant in _variants(params, policy="sarq")}, "head SIDs longer than tail")


@dg.asset_check(asset=semantic_ids, blocking=True,
                description="No quantizer level of a residual k-means variant (TIGER) uses fewer codes than "
                            "quantize.min_utilisation (the ACRQ codes are checked on acrq_codes).")
def residual_kmeans_level_utilisation(semantic_ids: str, params: ParamsResource) -> dg.AssetCheckResult:
    health = json.loads((Path(semantic_ids) / HEALTH_FILE).read_text())
    floor = params.load()["quantize"]["min_utilisation"]
    return _every_variant({variant: checks.level_utilisation(health[variant]["codes"], floor)
                           for variant in _variants(params, codes="residual_kmeans")}, "level utilisation")
