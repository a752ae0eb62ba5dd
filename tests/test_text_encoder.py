"""MiniLM text features: offline model, content-hash cache, tokenizer and word embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from sid_models.text.encoder import MINILM_WIDTH, TextEncoder, content_keys, load_tokenizer, load_word_embeddings
from sid_models.text.stage import run as run_text_stage

TEXTS = ["cordless drill 20v", "white ceramic toilet", "cordless drill 20v", "brass door hinge"]


def _encoder(cache_dir, batch_size=2) -> TextEncoder:
    return TextEncoder("sentence-transformers/all-MiniLM-L6-v2", cache_dir, batch_size=batch_size,
                       max_seq_length=128, progress=False)


def test_embeddings_are_unit_norm_and_deterministic_per_text(tmp_path):
    vectors = _encoder(tmp_path).encode(TEXTS)
    assert vectors.shape == (len(TEXTS), MINILM_WIDTH) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert vectors[0] @ vectors[1] < 0.9  # different products, different vectors


def test_second_call_with_unchanged_text_never_calls_the_model(tmp_path):
    first = _encoder(tmp_path)
    expected = first.encode(TEXTS)
    assert first.model_calls == 2 and first.texts_encoded == 3  # 3 distinct texts, batches of 2
    again = _encoder(tmp_path)  # a fresh process would start like this: only the cache folder is shared
    cached = again.encode(list(reversed(TEXTS)))
    assert again.model_calls == 0 and again.texts_encoded == 0
    np.testing.assert_array_equal(cached, expected[::-1])


def test_only_new_texts_reach_the_model(tmp_path):
    _encoder(tmp_path).encode(TEXTS)
    encoder = _encoder(tmp_path)
    encoder.encode(TEXTS + ["garden hose 50 ft"])
    assert encoder.texts_encoded == 1


def test_cache_key_depends_on_model_and_text():
    keys = content_keys("model-a", ["x", "y"])
    assert keys[0] != keys[1]
    assert content_keys("model-b", ["x"])[0] != keys[0]
    assert _encoder(None).model_id != TextEncoder("sentence-transformers/all-MiniLM-L6-v2", None, 2, 64).model_id


def test_rejects_a_zero_batch_size(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoder("m", tmp_path, batch_size=0, max_seq_length=128)


def test_tokenizer_and_word_embeddings_share_the_vocabulary():
    tokenizer = load_tokenizer()
    embeddings = load_word_embeddings()
    ids = tokenizer("cordless drill")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert embeddings.shape == (tokenizer.vocab_size, MINILM_WIDTH)
    assert np.isfinite(embeddings).all()


def test_stage_writes_one_row_per_item_and_query_in_table_order(small_params, small_prepared, tmp_path):
    # The repository's cache (params text.cache_dir) keeps this cheap after the first run.
    prepared_folder = small_prepared.save(tmp_path / "prepared")
    out = tmp_path / "text"
    out.mkdir()
    run_text_stage(small_params, {"prepared_dataset": prepared_folder}, out)
    items, queries = np.load(out / "items.npy"), np.load(out / "queries.npy")
    assert items.shape == (len(small_prepared.items), MINILM_WIDTH)
    assert queries.shape == (len(small_prepared.queries), MINILM_WIDTH)
    row = 5
    np.testing.assert_allclose(items[row], _encoder(None).encode([small_prepared.item_text().iloc[row]])[0], atol=1e-5)
    np.testing.assert_allclose(queries[row], _encoder(None).encode([small_prepared.queries["text"].iloc[row]])[0],
                               atol=1e-5)
    rerun = tmp_path / "text2"
    rerun.mkdir()
    assert run_text_stage(small_params, {"prepared_dataset": prepared_folder}, rerun)["texts_encoded"] == 0
