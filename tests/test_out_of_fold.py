"""Out-of-fold query vectors: each training query's f_q from towers that never trained on it,
rotated onto the shipped towers' space; every other query keeps the shipped towers' f_q."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sid_models.params import deep_merge
from sid_models.sci.out_of_fold import HELD_OUT, fold_of_queries, hold_out, out_of_fold_query_vectors, procrustes
from sid_models.sci.stage import train_towers as run_towers_stage
from sid_models.sci.towers import load_towers
from sid_models.sci.train import TrainingData, TrainConfig
from sid_models.text.encoder import TextEncoder

FAST_TOWERS = {"train": {"epochs": 2, "batch_size": 64, "patience": 1, "preserve_sample": 32, "lambda_swap": 0.0},
               "tower": {"kind": "mlp_lexical", "kinds": {"mlp_lexical": {"hidden_dim": 64, "lexical_dim": 64}}}}


def test_folds_deal_every_training_query_once_in_near_equal_seeded_shares(small_prepared):
    fold_of = fold_of_queries(small_prepared, 3, seed=0)
    assert set(fold_of) == set(small_prepared.relevant("train")["query_id"].astype(str))
    sizes = np.bincount(list(fold_of.values()), minlength=3)
    assert sizes.max() - sizes.min() <= 1
    assert fold_of == fold_of_queries(small_prepared, 3, seed=0)
    assert fold_of != fold_of_queries(small_prepared, 3, seed=1)
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_of_queries(small_prepared, 1, seed=0)


def test_a_held_out_fold_brings_no_pair_to_tower_training(small_params, small_prepared):
    fold_of = fold_of_queries(small_prepared, 2, seed=0)
    held = {query for query, fold in fold_of.items() if fold == 0}
    data = hold_out(small_prepared, held)
    config = TrainConfig.from_params(deep_merge(small_params["sci"], FAST_TOWERS), 0)
    pairs = TrainingData.build(data, config)
    trained_on = set(data.queries["query_id"].astype(str).to_numpy()[np.unique(pairs.pair_queries)])
    assert trained_on == {query for query, fold in fold_of.items() if fold == 1}
    assert set(data.split_queries(HELD_OUT)["query_id"].astype(str)) == held
    # the dataset it came from is untouched, and validation stays what it was
    assert not small_prepared.queries["split"].eq(HELD_OUT).any()
    assert data.split_queries("valid")["query_id"].tolist() == small_prepared.split_queries("valid")["query_id"].tolist()


def test_procrustes_recovers_a_rotation():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(500, 12))
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    np.testing.assert_allclose(procrustes(source, source @ rotation), rotation, atol=1e-5)


@pytest.fixture(scope="module")
def towers(small_params, small_stage_folders, tmp_path_factory):
    folder = tmp_path_factory.mktemp("towers")
    run_towers_stage(deep_merge(small_params, {"sci": FAST_TOWERS}), small_stage_folders, folder)
    return folder


def test_training_queries_read_rotated_out_of_fold_vectors_and_others_the_shipped_ones(small_params, small_prepared,
                                                                                          towers):
    params = deep_merge(small_params, {"sci": FAST_TOWERS})
    reference = np.load(towers / "queries.npy")
    encoder = TextEncoder.from_params(params["text"], progress=False)
    vectors, figures = out_of_fold_query_vectors(small_prepared, params["sci"], params["text"], 0, 2, reference,
                                                 load_towers(towers), encoder.encode)
    training = small_prepared.queries["query_id"].astype(str).isin(set(fold_of_queries(small_prepared, 2, 0))).to_numpy()
    np.testing.assert_array_equal(vectors[~training], reference[~training])
    np.testing.assert_allclose(np.linalg.norm(vectors[training], axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[training], reference[training], atol=1e-3)
    assert figures["fold0_queries"] + figures["fold1_queries"] == training.sum()
    for fold in (0, 1):
        assert figures[f"fold{fold}_item_cos_rotated"] >= figures[f"fold{fold}_item_cos_before"] - 1e-6
        assert 0 <= figures[f"fold{fold}_recall@10_out_of_fold"] <= 1
    json.dumps(figures)    # they land in sft_data.json


def test_an_sft_model_trains_on_out_of_fold_vectors_and_records_the_folds(small_params, small_prepared, towers,
                                                                         tmp_path):
    from sid_models.generative.train import DATA_FILE, train_sft
    from sid_models.shared.training import DistContext
    from test_generative_data import write_synthetic_sids
    from test_sft import tiny_params

    sids = write_synthetic_sids(small_prepared, tmp_path / "sids")
    params = deep_merge(tiny_params(small_params, indexing_query_vector="title", query_vector_folds=2),
                        {"generative": {"query_vector": True}, "sci": FAST_TOWERS})
    model, history = train_sft(params, small_prepared, sids, tmp_path / "model", dist=DistContext(), progress=False,
                               towers_folder=towers)
    recorded = json.loads((tmp_path / "model" / DATA_FILE).read_text())
    assert recorded["query_vector_folds"] == 2 and len(history) == 6
    assert recorded["fold0_queries"] + recorded["fold1_queries"] == len(fold_of_queries(small_prepared, 2, 0))
    # the stage's other models (sft.baselines) reuse that training of the folds instead of repeating it
    from sid_models.generative.train import out_of_fold_vectors
    reference = np.load(towers / "queries.npy")
    vectors, figures = out_of_fold_vectors(params, small_prepared, reference, towers, progress=False)
    assert out_of_fold_vectors(params, small_prepared, reference, towers, progress=False)[0] is vectors
    assert figures["fold0_queries"] == recorded["fold0_queries"]
    other_seed = out_of_fold_vectors({**params, "seed": 1}, small_prepared, reference, towers, progress=False)[0]
    assert other_seed is not vectors and not np.allclose(other_seed, vectors)
    # a resume with the shipped towers' vectors instead is another training, refused
    with pytest.raises(ValueError, match="trained from other params or inputs"):
        train_sft(deep_merge(params, {"sft": {"query_vector_folds": 0}}), small_prepared, sids, tmp_path / "model",
                  dist=DistContext(), progress=False, towers_folder=towers)
