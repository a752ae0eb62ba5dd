"""The seq2seq retriever's interface: shapes, cached decoding, vocabulary round trips."""
from __future__ import annotations

import json

import pytest
import torch

from sid_models.generative.model import (GenerativeConfig, Seq2SeqRetriever, init_encoder_embeddings,
                                         load_model, save_model)
from sid_models.generative.vocab import BOS, EOS, SidVocab

TINY = GenerativeConfig(encoder="wordpiece", tuned_layers=0, enc_vocab_size=100, dec_vocab_size=20, d_model=32, n_heads=4, n_enc_layers=2,
                        n_dec_layers=2, d_ff=64, dropout=0.0, max_enc_len=10, max_dec_len=5, enc_pad_id=0,
                        dec_pad_id=0, query_vector_dim=0)


def _batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 100, (3, 7), generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    input_ids[1, 5:] = 0
    decoder = torch.randint(3, 20, (3, 4), generator=generator)
    decoder[:, 0] = BOS
    return input_ids, mask, decoder


def test_forward_returns_logits_and_final_hidden_states():
    torch.manual_seed(0)
    model = Seq2SeqRetriever(TINY).eval()
    input_ids, mask, decoder = _batch()
    logits, hidden = model(input_ids, mask, decoder)
    assert logits.shape == (3, 4, TINY.dec_vocab_size) and hidden.shape == (3, 4, TINY.d_model)
    torch.testing.assert_close(logits, hidden @ model.dec_tokens.weight.t())


def test_cached_steps_with_beams_equal_teacher_forced_decoding():
    torch.manual_seed(0)
    model = Seq2SeqRetriever(TINY).eval()
    input_ids, mask, decoder = _batch()
    logits, _ = model(input_ids, mask, decoder)
    cache = model.start_cache(input_ids, mask, beams=2)
    tokens = decoder.repeat_interleave(2, dim=0)
    for position in range(decoder.shape[1]):
        step = model.step(tokens[:, position], cache)
        expected = torch.log_softmax(logits[:, position], dim=-1).repeat_interleave(2, dim=0)
        torch.testing.assert_close(step, expected, atol=1e-5, rtol=1e-5)


def test_query_vector_is_one_more_memory_position_read_by_training_and_cached_decoding():
    from dataclasses import replace

    torch.manual_seed(0)
    model = Seq2SeqRetriever(replace(TINY, query_vector_dim=6)).eval()
    input_ids, mask, decoder = _batch()
    vectors = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    memory, memory_mask = model.encode(input_ids, mask, vectors)
    assert memory.shape == (3, 8, TINY.d_model) and memory_mask[:, -1].all() and not memory_mask[1, 5:7].any()
    logits, _ = model(input_ids, mask, decoder, vectors)
    other, _ = model(input_ids, mask, decoder, -vectors)
    assert not torch.allclose(logits, other)
    cache = model.start_cache(input_ids, mask, beams=1, query_vectors=vectors)
    for position in range(decoder.shape[1]):
        torch.testing.assert_close(model.step(decoder[:, position], cache),
                                   torch.log_softmax(logits[:, position], dim=-1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="query vectors must be given"):
        model(input_ids, mask, decoder)
    with pytest.raises(ValueError, match="query vectors must be omitted"):
        Seq2SeqRetriever(TINY)(input_ids, mask, decoder, vectors)


def test_padding_does_not_change_the_encoding_of_real_tokens():
    torch.manual_seed(0)
    model = Seq2SeqRetriever(TINY).eval()
    input_ids, mask, decoder = _batch()
    short_logits, _ = model(input_ids[1:2, :5], mask[1:2, :5], decoder[1:2])
    padded_logits, _ = model(input_ids[1:2], mask[1:2], decoder[1:2])
    torch.testing.assert_close(short_logits, padded_logits, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = Seq2SeqRetriever(TINY).eval()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    input_ids, mask, decoder = _batch()
    torch.testing.assert_close(model(input_ids, mask, decoder)[0], loaded(input_ids, mask, decoder)[0])


def test_a_checkpoint_written_before_encoder_kinds_loads_as_a_wordpiece_encoder(tmp_path):
    model = Seq2SeqRetriever(TINY).eval()
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["encoder"], config["tuned_layers"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_model(tmp_path).eval()
    assert loaded.config.encoder == "wordpiece" and loaded.config.tuned_layers == 0
    input_ids, mask, decoder = _batch()
    torch.testing.assert_close(model(input_ids, mask, decoder)[0], loaded(input_ids, mask, decoder)[0])


def test_encoder_embeddings_initialise_from_a_projection_of_pretrained_ones():
    model = Seq2SeqRetriever(TINY)
    pretrained = torch.randn(100, 48) * torch.linspace(3, 0.1, 48)
    init_encoder_embeddings(model, pretrained)
    weight = model.enc_tokens.weight.detach()
    assert abs(weight.std().item() - 0.02) < 1e-4
    with pytest.raises(ValueError, match="vocabulary"):
        init_encoder_embeddings(model, torch.randn(99, 48))


def test_vocab_round_trip_and_level_ranges():
    vocab = SidVocab((4, 3, 2))
    assert vocab.size == 3 + 9
    tokens = vocab.encode((3, 0, 1))
    assert tokens == [3 + 3, 7 + 0, 10 + 1, EOS]
    assert vocab.decode([BOS] + tokens) == (3, 0, 1)
    assert vocab.decode(vocab.encode((2,))) == (2,)


def test_vocab_rejects_codes_outside_their_level():
    vocab = SidVocab((4, 3))
    with pytest.raises(ValueError, match="level 1"):
        vocab.encode((0, 3))
    with pytest.raises(ValueError, match="not a level-0 code"):
        vocab.decode([vocab.token(1, 0), EOS])
    assert SidVocab.for_sids([(1, 2), (0, 0, 5)]).codes_per_level == (2, 3, 6)
