"""SCI towers that fine-tune MiniLM's top layers: the untrained start is MiniLM itself, token
states are cached by content hash, training moves the towers apart, and the artifact serves text."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sid_models.params import deep_merge
from sid_models.sci.stage import train_towers as run_towers_stage
from sid_models.sci.text_tower import TextDualTower, TextTowerConfig
from sid_models.sci.towers import load_towers
from sid_models.sci.train import TrainConfig, new_towers, tower_inputs, train_towers
from sid_models.text.encoder import TextEncoder
from sid_models.text.states import StateEncoder, load_minilm

TEXTS = ["cordless drill 18v", "maple 24 in green copper rug", "a", "pvc pipe 3/4 inch elbow fitting schedule 40"]
MINILM_ROW = {"finetune_layers": 1, "max_seq_length": 64, "dropout": 0.0}


def _config(small_params, layers: int = 1) -> TextTowerConfig:
    return TextTowerConfig(model_name=small_params["text"]["model_name"], **{**MINILM_ROW, "finetune_layers": layers})


@pytest.mark.parametrize("layers", [1, 2])
def test_untrained_text_towers_are_minilm_sentence_vectors(small_params, layers):
    towers = TextDualTower(_config(small_params, layers))
    states = towers.state_encoder(8, None, progress=False).encode(TEXTS)
    expected = TextEncoder(small_params["text"]["model_name"], None, 8, 64, progress=False).encode(TEXTS)
    for encode in (towers.encode_queries, towers.encode_items):
        # the states are stored as float16: equal to MiniLM up to that rounding
        np.testing.assert_allclose(encode(states), expected, atol=2e-3)
        assert (np.sum(encode(states) * expected, axis=1) > 0.9999).all()


def test_token_states_come_from_the_cache_on_a_second_call(small_params, tmp_path):
    first = StateEncoder(small_params["text"]["model_name"], 5, 64, 2, tmp_path, progress=False)
    states = first.encode(TEXTS + TEXTS[:1])
    assert first.texts_encoded == len(TEXTS)   # the repeated text is computed once
    assert len(states) == 5 and np.diff(states.offsets)[0] == np.diff(states.offsets)[4]
    second = StateEncoder(small_params["text"]["model_name"], 5, 64, 2, tmp_path, progress=False)
    again = second.encode(list(reversed(TEXTS)))
    assert second.texts_encoded == 0
    np.testing.assert_array_equal(again.subset(np.arange(len(TEXTS))[::-1]).states, states.subset(np.arange(4)).states)
    # another layer is another key
    other = StateEncoder(small_params["text"]["model_name"], 4, 64, 2, tmp_path, progress=False)
    other.encode(TEXTS[:1])
    assert other.texts_encoded == 1
    with pytest.raises(ValueError, match="layer"):
        StateEncoder(small_params["text"]["model_name"], 7, 64, 2, tmp_path)


def test_padded_batches_mask_the_padding(small_params):
    states = StateEncoder(small_params["text"]["model_name"], 5, 64, 8, None, progress=False).encode(TEXTS)
    padded, mask = states.batch(np.array([2, 3]))
    lengths = np.diff(states.offsets)[[2, 3]]
    assert padded.shape[1] == lengths.max() and mask.sum(dim=1).tolist() == lengths.tolist()
    assert (padded[0, lengths[0]:] == 0).all()


def test_fine_tuning_trains_own_copies_and_moves_the_towers_apart(small_params, small_prepared):
    frozen = {name: tensor.clone() for name, tensor in load_minilm().state_dict().items()}
    sci = deep_merge(small_params["sci"], {"tower": {"kind": "minilm", "kinds": {"minilm": {
        "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "lambda_swap": 0.0}}}}})
    config = TrainConfig.from_params(sci, 0)
    assert (config.epochs, config.lambda_preserve) == (1, 0.0)   # the kind's train row merged over sci.train
    encoder = TextEncoder.from_params(small_params["text"], progress=False)
    item_base = encoder.encode(small_prepared.item_text().tolist(), "items")
    query_base = encoder.encode(small_prepared.queries["text"].tolist(), "queries")
    towers = new_towers(sci["tower"], {**small_params["text"], "cache_dir": None}, small_prepared, item_base,
                        query_base, config)
    items, queries = tower_inputs(towers, small_prepared, item_base, query_base, {**small_params["text"], "cache_dir": None})
    result = train_towers(small_prepared, towers, items, queries, config)
    assert result.history[0]["misalign_items_l2"] < 1e-6
    # with λ_swap 0 each tower learns only its own kind of text: after an epoch they differ
    assert result.history[1]["misalign_queries_l2"] > 1e-3 and result.history[1]["misalign_items_cos"] < 1
    # the frozen lower layers never moved
    for name, tensor in load_minilm().state_dict().items():
        torch.testing.assert_close(tensor, frozen[name], rtol=0, atol=0)


def test_stage_writes_views_a_loaded_tower_reproduces_from_text(small_params, small_prepared, tmp_path):
    encoder = TextEncoder.from_params(small_params["text"], progress=False)
    items = encoder.encode(small_prepared.item_text().tolist(), "items")
    queries = encoder.encode(small_prepared.queries["text"].tolist(), "queries")
    prepared_folder = small_prepared.save(tmp_path / "prepared")
    text_folder = tmp_path / "text"
    text_folder.mkdir()
    np.save(text_folder / "items.npy", items)
    np.save(text_folder / "queries.npy", queries)
    params = deep_merge(small_params, {"text": {"cache_dir": str(tmp_path / "cache")}, "sci": {"tower": {
        "kind": "minilm", "kinds": {"minilm": {"train": {"epochs": 1, "batch_size": 32}}}}}})
    out = tmp_path / "towers"
    out.mkdir()
    metadata = run_towers_stage(params, {"prepared_dataset": prepared_folder, "text_embeddings": text_folder}, out)
    towers = load_towers(out)
    assert isinstance(towers, TextDualTower) and towers.config.finetune_layers == 1
    saved = np.load(out / "queries.npy")
    assert saved.shape == (len(queries), 384)
    texts = small_prepared.queries["text"].tolist()[:5]
    # served queries go through the frozen layers uncached, then the query tower
    np.testing.assert_allclose(towers.encode_query_texts(texts, encoder.encode), saved[:5], atol=1e-4)
    assert "misalign_items_l2_trained" in metadata
