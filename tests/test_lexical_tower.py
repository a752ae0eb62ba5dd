"""SCI towers with a lexical part: tf-idf terms that survive misspellings, one inner product that
mixes the semantic and the lexical cosine, towers that start equal and drift apart in training,
and an artifact that serves raw query text."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sid_models.lexical.terms import TermVectoriser
from sid_models.generative.retriever import write_retriever_assets
from sid_models.params import deep_merge
from sid_models.sci.lexical_tower import LexicalDualTower, LexicalInputs, LexicalTowerConfig, initial_embedding
from sid_models.sci.stage import train_towers as run_towers_stage
from sid_models.sci.towers import initial_projection, load_towers
from sid_models.sci.train import TrainConfig, new_towers, tower_inputs, train_towers
from sid_models.text.encoder import TextEncoder
from sid_models.text.stage import load_embeddings

TITLES = ["DEWALT 20-Volt MAX Cordless Drill/Driver Kit", "Husky 3/4 in. PVC Elbow Fitting",
          "Everbilt #8 x 1-1/4 in. Wood Screws (100-Pack)", "Maple 24 in. Green Copper Rug"]
FAST_TRAIN = {"epochs": 2, "batch_size": 64, "patience": 1, "preserve_sample": 32}
SMALL_LEXICAL = {"hidden_dim": 64, "lexical_dim": 64}


def _cosines(vectoriser: TermVectoriser, query: str) -> np.ndarray:
    return (vectoriser.transform([query]) @ vectoriser.transform(TITLES).T).toarray().ravel()


def test_a_misspelt_query_still_matches_its_title_by_trigrams():
    vectoriser = TermVectoriser.fit(TITLES, "english", "en")
    cosines = _cosines(vectoriser, "cordles dril")       # no stemmed word in common with any title
    assert cosines.argmax() == 0 and cosines[0] > 0.2
    assert not any(term.startswith("w:") and term in vectoriser.index for term in vectoriser.terms("cordles dril"))


def test_term_vectors_are_unit_rows_stemmed_and_drop_unknown_terms():
    vectoriser = TermVectoriser.fit(TITLES, "english", "en")
    matrix = vectoriser.transform(TITLES + ["zzqx", "in"])
    np.testing.assert_allclose(np.sqrt(matrix.multiply(matrix).sum(axis=1)).A.ravel()[:4], 1.0, rtol=1e-6)
    assert matrix[4].nnz == 0                             # nothing of it is in the catalogue
    assert "w:screw" in vectoriser.index and "w:screws" not in vectoriser.index
    assert "w:in" not in vectoriser.index             # a stopword is not a word term...
    assert matrix[5].nnz == 2                             # ...but its trigrams " in", "in " count
    # a term every title holds weighs less than a rare one (idf)
    assert vectoriser.idf[vectoriser.index["c: in"]] < vectoriser.idf[vectoriser.index["w:dewalt"]]


def test_term_vocabulary_round_trips_through_its_file(tmp_path):
    vectoriser = TermVectoriser.fit(TITLES, "english", "en")
    vectoriser.save(tmp_path)
    loaded = TermVectoriser.load(tmp_path)
    before, after = vectoriser.transform(["cordless drill kit"]), loaded.transform(["cordless drill kit"])
    assert (before != after).nnz == 0 and loaded.vocabulary == vectoriser.vocabulary


def _towers(items: np.ndarray, share: float = 0.5) -> LexicalDualTower:
    vectoriser = TermVectoriser.fit(TITLES, "english", "en")
    config = LexicalTowerConfig(in_dim=items.shape[1], out_dim=16, hidden_dim=24, n_blocks=1, dropout=0.0,
                                learn_projection=True, vocabulary_size=len(vectoriser), lexical_dim=512,
                                lexical_share=share, lexical_learning="term_weights", stemmer="english", stopwords="en")
    return LexicalDualTower(config, vectoriser, initial_projection(items, 16, "orthogonal", 0), initial_embedding(config, 0))


def test_untrained_towers_agree_and_mix_semantic_and_lexical_cosines():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((len(TITLES), 32)).astype(np.float32)
    towers = _towers(items, share=0.3)
    inputs = towers.inputs(TITLES, items)
    query_view, item_view = towers.encode_queries(inputs), towers.encode_items(inputs)
    np.testing.assert_array_equal(query_view, item_view)
    np.testing.assert_allclose(np.linalg.norm(query_view, axis=1), 1.0, atol=1e-5)
    semantic = towers.query_tower.semantic(torch.from_numpy(items)).detach().numpy()
    lexical = item_view[:, 16:] / np.sqrt(0.3)
    np.testing.assert_allclose(item_view @ item_view.T, 0.7 * semantic @ semantic.T + 0.3 * lexical @ lexical.T,
                               atol=1e-5)
    # the lexical part starts as a random projection of the tf-idf vectors: near their cosine
    terms = inputs.terms
    np.testing.assert_allclose(lexical @ lexical.T, (terms @ terms.T).toarray(), atol=0.25)


def test_lexical_towers_train_apart_and_serve_raw_text(small_params, small_prepared, small_stage_folders, tmp_path):
    items, queries = load_embeddings(small_stage_folders["text_embeddings"])
    params = deep_merge(small_params, {"sci": {"train": {**FAST_TRAIN, "lambda_swap": 0.0}, "tower": {
        "kind": "mlp_lexical", "kinds": {"mlp_lexical": SMALL_LEXICAL}}}})
    out = tmp_path / "towers"
    out.mkdir()
    metadata = run_towers_stage(params, small_stage_folders, out)
    # each tower trained on its own kind of text: after an epoch they no longer coincide
    history = json.loads((out / "history.json").read_text())
    assert metadata["misalign_items_l2_untrained"] == 0 == history[0]["misalign_items_l2"]
    assert history[1]["misalign_items_l2"] > 1e-3 and history[1]["misalign_queries_cos"] < 1
    towers = load_towers(out)
    assert isinstance(towers, LexicalDualTower)
    width = params["sci"]["tower"]["kinds"]["mlp_lexical"]["out_dim"] + SMALL_LEXICAL["lexical_dim"]
    saved = np.load(out / "queries.npy")
    assert saved.shape == (len(queries), width)
    texts = small_prepared.queries["text"].tolist()[:5]
    encoder = TextEncoder.from_params(small_params["text"], progress=False)
    np.testing.assert_allclose(towers.encode_query_texts(texts, encoder.encode), saved[:5], atol=1e-5)
    np.testing.assert_allclose(np.load(out / "item_item_view.npy"),
                               towers.encode_items(towers.inputs(small_prepared.item_text().tolist(), items)), atol=1e-5)
    # the generative retriever's assets carry the term vocabulary the query tower needs
    assets = write_retriever_assets(tmp_path / "checkpoint", out, params)
    np.testing.assert_allclose(load_towers(assets).encode_query_texts(texts, encoder.encode), saved[:5], atol=1e-5)


@pytest.mark.parametrize("learning", ["embedding", "term_weights", "none"])
def test_only_the_lexical_parameters_lexical_learning_names_train(small_params, small_prepared, small_stage_folders,
                                                                   learning):
    items, queries = load_embeddings(small_stage_folders["text_embeddings"])
    sci = deep_merge(small_params["sci"], {"train": FAST_TRAIN, "tower": {
        "kind": "mlp_lexical", "kinds": {"mlp_lexical": {**SMALL_LEXICAL, "lexical_learning": learning}}}})
    config = TrainConfig.from_params(sci, 0)
    towers = new_towers(sci["tower"], small_params["text"], small_prepared, items, queries, config)
    item_inputs, query_inputs = tower_inputs(towers, small_prepared, items, queries, small_params["text"])
    assert isinstance(item_inputs, LexicalInputs) and len(query_inputs) == len(queries)
    rows = np.arange(16)
    score = (towers.query_tower(query_inputs.batch(rows)) * towers.item_tower(item_inputs.batch(rows))).sum()
    score.backward()
    lexical = {"embedding": towers.query_tower.lexical.weight, "term_weights": towers.query_tower.term_log_weight}
    for name, parameter in lexical.items():
        trains = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        assert trains == (name == learning), f"{name} trains={trains} under lexical_learning={learning}"
    # the semantic MLP trains in every mode
    assert towers.query_tower.semantic.blocks[0].down.weight.grad.abs().sum() > 0


def test_lexical_share_outside_the_open_interval_is_refused():
    with pytest.raises(ValueError, match="lexical_share"):
        LexicalTowerConfig(in_dim=8, out_dim=4, hidden_dim=8, n_blocks=1, dropout=0.0, learn_projection=True,
                           vocabulary_size=10, lexical_dim=4, lexical_share=1.0, lexical_learning="none",
                           stemmer=None, stopwords=None)
