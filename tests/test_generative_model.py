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
                        dec_pad_id=0, query_vector_dim=0, sid_prior=False)


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


def _prior_model(vectors_dim: int = 6):
    from dataclasses import replace

    from sid_models.generative.prior import set_sid_prior

    torch.manual_seed(0)
    model = Seq2SeqRetriever(replace(TINY, query_vector_dim=vectors_dim, sid_prior=True)).eval()
    token_vectors = torch.randn(TINY.dec_vocab_size, vectors_dim, generator=torch.Generator().manual_seed(2))
    token_vectors[:3] = 0.0
    set_sid_prior(model, token_vectors.numpy(), scale=7.0)
    return model, token_vectors


def test_sid_prior_adds_the_scaled_dense_score_of_every_token_in_training_and_cached_decoding(tmp_path):
    model, token_vectors = _prior_model()
    input_ids, mask, decoder = _batch()
    vectors = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    logits, hidden = model(input_ids, mask, decoder, vectors)
    torch.testing.assert_close(logits, hidden @ model.dec_tokens.weight.t() + 7.0 * (vectors @ token_vectors.t())[:, None, :])
    cache = model.start_cache(input_ids, mask, beams=2, query_vectors=vectors)
    tokens = decoder.repeat_interleave(2, dim=0)
    for position in range(decoder.shape[1]):
        torch.testing.assert_close(model.step(tokens[:, position], cache),
                                   torch.log_softmax(logits[:, position], dim=-1).repeat_interleave(2, dim=0),
                                   atol=1e-5, rtol=1e-5)
    # the scale is learnt: the loss reaches it
    logits.logsumexp(-1).sum().backward()
    assert model.sid_prior_scale.grad is not None and model.sid_prior_scale.grad.abs() > 0
    # the checkpoint carries the token vectors and the learnt scale
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    torch.testing.assert_close(loaded(input_ids, mask, decoder, vectors)[0], logits.detach())
    with pytest.raises(ValueError, match="query vectors"):
        model.decode(*model.encode(input_ids, mask, vectors), decoder)


def test_sid_prior_is_refused_without_query_vectors_and_loads_with_matching_shapes_only():
    from dataclasses import replace

    from sid_models.generative.prior import set_sid_prior

    with pytest.raises(ValueError, match="sid_prior needs query vectors"):
        Seq2SeqRetriever(replace(TINY, sid_prior=True))
    model, _ = _prior_model()
    with pytest.raises(ValueError, match="token vectors"):
        set_sid_prior(model, torch.zeros(TINY.dec_vocab_size, 5).numpy(), scale=1.0)
    with pytest.raises(ValueError, match="without sid_prior"):
        set_sid_prior(Seq2SeqRetriever(TINY), torch.zeros(TINY.dec_vocab_size, 6).numpy(), scale=1.0)


def test_token_vectors_recover_an_additive_code_and_start_as_residual_quantisation():
    import numpy as np

    from sid_models.generative.data import sid_targets
    from sid_models.generative.prior import PriorConfig, fit_token_vectors

    vocab = SidVocab((4, 3, 2))
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(vocab.size, 5))
    truth[:3] = 0.0
    # variable-length SIDs: every code of every level used, some items stop at level 1 or 2
    sids = [tuple(int(c) for c in (a, b, c)[:length]) for a in range(4) for b in range(3) for c in range(2)
            for length in (1, 2, 3)]
    targets = sid_targets(sids, vocab, vocab.levels + 1)
    is_code = targets >= 3
    items = np.stack([truth[row[code]].sum(axis=0) for row, code in zip(targets, is_code)])
    fitted = fit_token_vectors(targets, items, vocab.size, sweeps=200)
    reconstructed = np.stack([fitted[row[code]].sum(axis=0) for row, code in zip(targets, is_code)])
    np.testing.assert_allclose(reconstructed, items, atol=1e-3)
    assert not fitted[:3].any()             # PAD, BOS, EOS carry no prior
    # one pass: level 0's vectors are the mean item vector of each first-level cell
    greedy = fit_token_vectors(targets, items, vocab.size, sweeps=1)
    for code in range(4):
        np.testing.assert_allclose(greedy[vocab.token(0, code)], items[targets[:, 0] == vocab.token(0, code)].mean(axis=0),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one target row per item vector"):
        fit_token_vectors(targets, items[:-1], vocab.size, sweeps=1)
    with pytest.raises(ValueError, match="sweeps >= 1"):
        PriorConfig.from_params({"enabled": True, "scale": 20.0, "sweeps": 0})
