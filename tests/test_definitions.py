"""The Dagster graph is the STAGES table: one asset per stage, with the same upstream edges."""
from __future__ import annotations

import dagster as dg

from orchestration.definitions import defs
from sid_models.stages import STAGES

# assets that are not a pipeline stage of STAGES (the registry step reads the stages' outputs)
EXTRA_ASSETS = {"registered_model"}


def test_every_stage_is_one_asset_with_the_stages_upstreams():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys - EXTRA_ASSETS == set(STAGES)
    for name, stage in STAGES.items():
        parents = {key.to_user_string() for key in graph.get(dg.AssetKey(name)).parent_keys}
        assert parents == set(stage.upstream), name
