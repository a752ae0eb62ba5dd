"""In-process Dagster materialisation of the semantic-ID assets and their blocking checks.

The upstream assets are replaced by assets of the same names that hand over folders written
in the SCI format (see test_quantize_stage.folders), so this file runs without training towers.
"""
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration.assets import semantic_ids as sid_assets
from orchestration.resources import MlflowTracking, ParamsResource
from orchestration.stage_asset import ARTIFACT_ROOT
from sid_models.params import deep_merge

from test_quantize_stage import STAGE_PARAMS, folders  # noqa: F401  (module fixture)

STAGES = ("acrq_codebooks", "acrq_codes", "semantic_ids")
CHECKS = {"acrq_level_utilisation", "every_item_one_sid", "head_sids_collision_free", "head_sids_longer_than_tail",
          "residual_kmeans_level_utilisation"}


def upstream_assets(folders: dict) -> list[dg.AssetsDefinition]:
    def handing_over(name: str) -> dg.AssetsDefinition:
        @dg.asset(name=name)
        def existing_folder() -> str:
            return str(folders[name])
        return existing_folder
    return [handing_over(name) for name in ("prepared_dataset", "sci_towers", "sci_index")]


def materialize(tmp: Path, params: dict, folders: dict) -> dg.ExecuteInProcessResult:
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    resources = {"params": ParamsResource(path=str(params_file)),
                 "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                                                   artifact_root=str(tmp / "mlartifacts"))}
    result = dg.materialize([*upstream_assets(folders), *dg.load_assets_from_modules([sid_assets]),
                             *dg.load_asset_checks_from_modules([sid_assets])],
                            resources=resources, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    return result


@pytest.fixture(scope="module")
def run(folders, small_params, tmp_path_factory):  # noqa: F811
    results = []

    def go(overrides: dict) -> dg.ExecuteInProcessResult:
        params = deep_merge(deep_merge(small_params, STAGE_PARAMS), overrides)
        results.append(materialize(tmp_path_factory.mktemp("dagster_sids"), params, folders))
        return results[-1]

    yield go
    for result in results:
        for stage in STAGES:
            for folder in (ARTIFACT_ROOT / stage / result.run_id, ARTIFACT_ROOT / stage / f"{result.run_id}.partial"):
                shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_assets_materialise_and_every_check_passes(run):
    result = run({})
    assert result.success
    evaluations = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert set(evaluations) == CHECKS
    assert all(evaluation.passed for evaluation in evaluations.values())
    metadata = result.asset_materializations_for_node("semantic_ids")[0].metadata
    assert metadata["sarq_acrq_head_collision_rate"].value == 0.0
    assert len(metadata["sha256"].value) == 64
    assert "sarq_acrq_codes_level2_utilisation" in metadata
    assert (Path(result.output_for_node("semantic_ids")) / "sids.parquet").is_file()


def test_failing_utilisation_check_blocks_the_sid_tables(run):
    result = run({"quantize": {"min_utilisation": 1.01}})
    evaluations = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert not evaluations["acrq_level_utilisation"].passed
    assert not result.asset_materializations_for_node("semantic_ids")
