"""The three semantic-ID stages end to end on the reduced demo store.

The SCI folders are written in their documented format from vectors that follow the demo's
categories (training towers is the SCI stage's business, not this test's); the index is the
real DualViewIndex built on them.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from sid_models.params import deep_merge
from sid_models.quantize import checks
from sid_models.quantize.stage import CODEBOOKS_FILE, CODES_FILE, HEALTH_FILE, load_inputs
from sid_models.quantize.table import load_sid_table, load_vocab
from sid_models.sci.index import DualViewIndex
from sid_models.sci.stage import ITEM_VIEW_FILE, QUERIES_FILE, QUERY_VIEW_FILE
from sid_models.sci.towers import CONFIG_FILE
from sid_models.stages import run_stage

from test_sci_index import UNREFINED  # one IVF-Flat, unrefined, unspilled index for both files

torch.set_num_threads(1)

STAGE_PARAMS = {
    "quantize": {"levels": 3, "codes_per_level": 8, "min_utilisation": 0.5},
    "sarq": {"tau": None, "target_mean_length": 2.0},
    "acrq": {"max_steps_per_phase": 60, "batch_size": 64},
    "semantic_ids": {"variants": {"tiger": {"levels": 2, "codes_per_level": 16}}},
}


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def folders(small_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("sids")
    prepared_folder = small_prepared.save(root / "prepared_dataset")
    rng = np.random.default_rng(0)
    dim = 32
    category = pd.factorize(small_prepared.items["category"])[0]
    centres = rng.standard_normal((category.max() + 1, dim))
    item_view = unit_rows(centres[category] + 0.4 * rng.standard_normal((len(category), dim)))
    query_view = unit_rows(item_view + 0.2 * rng.standard_normal(item_view.shape))
    relevant = small_prepared.relevant("train").drop_duplicates("query_id").set_index("query_id")["item_id"]
    item_row = {item_id: row for row, item_id in enumerate(small_prepared.items["item_id"])}
    anchor = np.array([item_row.get(relevant.get(query_id), rng.integers(len(item_row)))
                       for query_id in small_prepared.queries["query_id"]])
    queries = unit_rows(item_view[anchor] + 0.3 * rng.standard_normal((len(anchor), dim)))
    towers = root / "sci_towers"
    towers.mkdir()
    np.save(towers / ITEM_VIEW_FILE, item_view)
    np.save(towers / QUERY_VIEW_FILE, query_view)
    np.save(towers / QUERIES_FILE, queries)
    (towers / CONFIG_FILE).write_text(json.dumps({"kind": "mlp", "out_dim": dim}))
    DualViewIndex.build(query_view, item_view, nlist=6, niter=10, seed=0, nprobe=2, **UNREFINED).save(root / "sci_index")
    return {"prepared_dataset": prepared_folder, "sci_towers": towers, "sci_index": root / "sci_index"}


@pytest.fixture(scope="module")
def stage_run(folders, small_params, tmp_path_factory):
    params = deep_merge(small_params, STAGE_PARAMS)
    root = tmp_path_factory.mktemp("stage_out")
    inputs, metadata = dict(folders), {}
    for stage in ("acrq_codebooks", "acrq_codes", "semantic_ids"):
        metadata[stage] = run_stage(stage, params, inputs, root / stage)
        inputs[stage] = root / stage
    return params, inputs, metadata


def test_codebooks_stage_writes_frozen_codebooks_that_stage_b_keeps(stage_run):
    _, inputs, metadata = stage_run
    assert (inputs["acrq_codebooks"] / CODEBOOKS_FILE).is_file()
    assert metadata["acrq_codebooks"]["codes_per_level"] == [6, 8, 8]
    assert metadata["acrq_codes"]["codebooks_sha256"] == metadata["acrq_codebooks"]["codebooks_sha256"]
    codes = np.load(inputs["acrq_codes"] / CODES_FILE)
    assert codes.shape == (400, 3)


def test_level_one_of_every_sid_is_the_index_routing(stage_run, folders, small_prepared):
    _, inputs, _ = stage_run
    index = DualViewIndex.load(folders["sci_index"])
    cells = index.route(np.load(folders["sci_towers"] / QUERY_VIEW_FILE))
    table = load_sid_table(inputs["semantic_ids"], "sarq_acrq")
    assert table["item_id"].tolist() == small_prepared.items["item_id"].tolist()
    np.testing.assert_array_equal(table["sid"].map(lambda sid: sid[0]).to_numpy(), cells)


def test_sid_tables_pass_the_asset_checks(stage_run, small_prepared):
    params, inputs, _ = stage_run
    folder = inputs["semantic_ids"]
    sarq, tiger = load_sid_table(folder, "sarq_acrq"), load_sid_table(folder, "tiger")
    for table in (sarq, tiger):
        assert checks.every_item_one_sid(table, small_prepared.items["item_id"]).passed
    assert checks.head_collision_free(sarq).passed
    outcome = checks.head_longer_than_tail(sarq)
    assert outcome.passed, outcome.metadata
    health = json.loads((inputs["acrq_codes"] / HEALTH_FILE).read_text())
    assert checks.level_utilisation(health, params["quantize"]["min_utilisation"]).passed
    assert (tiger["length"] == 3).all() and (tiger["bucket_size"] == 1).all()


def test_vocab_covers_every_token(stage_run):
    _, inputs, _ = stage_run
    for variant in ("sarq_acrq", "tiger"):
        vocab = load_vocab(inputs["semantic_ids"], variant)
        table = load_sid_table(inputs["semantic_ids"], variant)
        assert table["length"].max() <= vocab["levels"]
        for sid in table["sid"]:
            assert all(0 <= code < vocab["codes_per_level"][position] for position, code in enumerate(sid))


def test_metadata_carries_health_and_per_segment_lengths(stage_run):
    _, _, metadata = stage_run
    sids = metadata["semantic_ids"]
    assert sids["sarq_acrq_head_mean_length"] > sids["sarq_acrq_tail_mean_length"]
    assert sids["sarq_acrq_head_collision_rate"] == 0.0
    assert 0 < sids["tiger_codes_level1_utilisation"] <= 1
    assert sids["sarq_acrq_sids_mean_length"] <= STAGE_PARAMS["sarq"]["target_mean_length"]


def test_a_failing_check_is_reported_not_hidden():
    table = pd.DataFrame({"item_id": ["a", "b"], "sid": [[0, 1], [0, 1]], "length": [2, 2],
                          "segment": ["head", "tail"], "bucket_size": [2, 2]})
    outcome = checks.head_collision_free(table)
    assert not outcome.passed and outcome.metadata["examples"] == ["a"]
    assert not checks.level_utilisation({"level1_utilisation": 0.2}, 0.5).passed


def test_lexical_towers_quantise_their_semantic_block_and_route_on_the_whole_vector(folders, small_prepared,
                                                                                     tmp_path):
    semantic = {name: np.load(folders["sci_towers"] / name) for name in (ITEM_VIEW_FILE, QUERY_VIEW_FILE, QUERIES_FILE)}
    dim = semantic[ITEM_VIEW_FILE].shape[1]
    rng = np.random.default_rng(3)
    towers = tmp_path / "sci_towers"
    towers.mkdir()
    for name, vectors in semantic.items():
        # [√(1 − α) · semantic ; √α · lexical], the layout of lexical_tower.py, with a random lexical block
        lexical = unit_rows(rng.standard_normal((len(vectors), 3 * dim)))
        np.save(towers / name, np.hstack([np.sqrt(0.4) * vectors, np.sqrt(0.6) * lexical]).astype(np.float32))
    (towers / CONFIG_FILE).write_text(json.dumps({"kind": "mlp_lexical", "out_dim": dim, "lexical_dim": 3 * dim}))
    full_query_view = np.load(towers / QUERY_VIEW_FILE)
    DualViewIndex.build(full_query_view, np.load(towers / ITEM_VIEW_FILE), nlist=6, niter=10, seed=0, nprobe=2,
                        **UNREFINED).save(tmp_path / "sci_index")
    catalogue = load_inputs(folders["prepared_dataset"], towers, tmp_path / "sci_index").catalogue
    np.testing.assert_allclose(catalogue.item_view, semantic[ITEM_VIEW_FILE], atol=1e-5)
    np.testing.assert_allclose(catalogue.query_vectors, semantic[QUERIES_FILE], atol=1e-5)
    np.testing.assert_array_equal(catalogue.cells, DualViewIndex.load(tmp_path / "sci_index").route(full_query_view))
    # mlp towers quantise every column
    plain = load_inputs(folders["prepared_dataset"], folders["sci_towers"], folders["sci_index"]).catalogue
    assert plain.item_view.shape[1] == dim
