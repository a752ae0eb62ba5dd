"""Variants are table rows: a new SID variant and an eval system over it are a few lines of
params, and run through the real stages (SIDs, SFT, the eval system's searcher)."""
from __future__ import annotations

import json

import pytest
import torch

from sid_models.eval.systems import build_system, system_rows
from sid_models.generative.stage import sft_models
from sid_models.params import deep_merge
from sid_models.quantize.table import load_sid_table, sid_variants
from sid_models.quantize.variants import variant_rows
from sid_models.sci.towers import DualTower, TowerConfig
from sid_models.stages import run_stage
from test_quantize_stage import STAGE_PARAMS, folders  # noqa: F401  (the module's stage-input fixture)
from test_sft import TINY_MODEL

NEW_VARIANT = {"semantic_ids": {"variants": {"rq_sarq": {"codes": "residual_kmeans", "levels": 2,
                                                         "codes_per_level": 8, "policy": "sarq"}}},
               "sft": {"baselines": {"tiger": None,
                                     "rq_sarq": {"variant": "rq_sarq", "overrides": {"sft": {"indexing_ratio": 0.0}}}}},
               "eval": {"systems": {"gr_rq_sarq": {"component": "generative", "checkpoint": "sft_checkpoint",
                                                   "subfolder": "rq_sarq", "variant": "rq_sarq", "ranker": None,
                                                   "bucket_pool": None, "about": "residual k-means codes, SARQ lengths"}}}}


@pytest.fixture(scope="module")
def pipeline(folders, small_params, tmp_path_factory):  # noqa: F811
    params = deep_merge(deep_merge(small_params, STAGE_PARAMS), {
        **NEW_VARIANT,
        "generative": {"preset": "cpu", "device": "cpu", "init_from_minilm": False, "query_vector": False,
                       "presets": {"cpu": {"model": TINY_MODEL, "sft": {"steps": 10, "batch_size": 32}}}},
        "sft": {**NEW_VARIANT["sft"], "warmup_steps": 2, "checkpoint_every": 10, "log_every": 5,
                "valid_max_queries": 8, "sci_distillation": {"weight": 0.0}},   # no query vector, no SCI teacher
        "decode": {"beam_size": 4, "batch_size": 16},
    })
    # the SFT stage copies the query tower next to the item views for bucket ranking
    torch.manual_seed(0)
    config = TowerConfig(in_dim=384, out_dim=32, hidden_dim=64, n_blocks=1, dropout=0.0, learn_projection=True)
    DualTower(config, torch.linalg.qr(torch.randn(config.in_dim, config.out_dim))[0].t().contiguous()).save(
        folders["sci_towers"])
    root = tmp_path_factory.mktemp("variant_pipeline")
    inputs, metadata = dict(folders), {}
    for stage in ("acrq_codebooks", "acrq_codes", "semantic_ids", "sft_checkpoint"):
        metadata[stage] = run_stage(stage, params, inputs, root / stage)
        inputs[stage] = root / stage
    return params, inputs, metadata


def test_a_new_sid_variant_is_a_params_row_the_stages_build_and_train(pipeline):
    params, inputs, metadata = pipeline
    assert list(variant_rows(params)) == ["sarq_acrq", "tiger", "rq_sarq"]
    assert sid_variants(inputs["semantic_ids"]) == ["sarq_acrq", "tiger", "rq_sarq"]
    table = load_sid_table(inputs["semantic_ids"], "rq_sarq")
    assert (inputs["semantic_ids"] / "rq_sarq_sids.parquet").is_file()
    assert table["sid"].map(len).max() <= 3                # 2 levels + SARQ's disambiguation token
    assert metadata["semantic_ids"]["rq_sarq_codes_level1_utilisation"] > 0
    assert (inputs["sft_checkpoint"] / "rq_sarq" / "model.pt").is_file()
    assert not (inputs["sft_checkpoint"] / "tiger").exists()          # not among sft.baselines
    validation = json.loads((inputs["sft_checkpoint"] / "validation.json").read_text())
    assert list(validation) == ["sarq_acrq", "rq_sarq"] and validation["rq_sarq"]["valid_sid_rate"] == 1.0


def test_a_baseline_recipe_overrides_params_for_that_model_alone_and_null_switches_a_row_off(pipeline):
    params, inputs, _ = pipeline
    models = sft_models(params, inputs["semantic_ids"], inputs["sft_checkpoint"])
    assert list(models) == ["sarq_acrq", "rq_sarq"]                        # tiger: null
    assert models["rq_sarq"][1] == inputs["sft_checkpoint"] / "rq_sarq"
    assert models["rq_sarq"][2]["sft"]["indexing_ratio"] == 0.0
    assert models["sarq_acrq"][2]["sft"]["indexing_ratio"] == params["sft"]["indexing_ratio"] > 0


def test_a_new_eval_system_is_a_params_row_over_that_variant(pipeline, small_prepared):
    params, inputs, _ = pipeline
    assert "gr_rq_sarq" in system_rows(params)
    found = build_system("gr_rq_sarq", params, inputs).search(["brass rug", "heavy duty ladder"], 5)
    known = set(small_prepared.items["item_id"].astype(str))
    assert [len(hits) for hits in found] == [5, 5] and all(item in known for hits in found for item, _ in hits)


def test_a_row_that_names_no_component_is_refused_with_its_name(small_params):
    bad = deep_merge(small_params, {"eval": {"systems": {"gr_typo": {"component": "generativ", "about": ""}}}})
    with pytest.raises(ValueError, match="eval.systems.gr_typo: component 'generativ'"):
        system_rows(bad)
    bad = deep_merge(small_params, {"semantic_ids": {"variants": {"rq": {"codes": "residual_kmeans", "policy": "sarq"}}}})
    with pytest.raises(ValueError, match=r"semantic_ids.variants.rq: a residual_kmeans row has keys"):
        variant_rows(bad)
