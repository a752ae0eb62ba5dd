"""The generative encoder's inputs: WordPiece ids or pretrained MiniLM token states (generative.encoder)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sid_models.generative.inputs import EncoderReader
from sid_models.generative.model import (GenerativeConfig, Seq2SeqRetriever, init_encoder_embeddings, load_model,
                                         save_model)
from sid_models.generative.vocab import BOS
from sid_models.text.states import StateEncoder

TEXT = {"model_name": "sentence-transformers/all-MiniLM-L6-v2", "batch_size": 8}
MINILM = GenerativeConfig(encoder="minilm", tuned_layers=1, enc_vocab_size=30522, dec_vocab_size=20, d_model=32,
                          n_heads=4, n_enc_layers=1, n_dec_layers=1, d_ff=64, dropout=0.0, max_enc_len=16,
                          max_dec_len=4, enc_pad_id=0, dec_pad_id=0, query_vector_dim=0)
TEXTS = ["cordless drill", "gas lawn mower with briggs engine and mulching kit", "rug"]


def decoder_input(rows: int) -> torch.Tensor:
    decoder = torch.randint(3, 20, (rows, 3), generator=torch.Generator().manual_seed(0))
    decoder[:, 0] = BOS
    return decoder


def test_tuned_layers_start_as_minilm_so_the_untrained_encoder_reads_minilm_final_states():
    torch.manual_seed(0)
    model = Seq2SeqRetriever(MINILM).eval()
    inputs, mask = EncoderReader.for_model(MINILM, TEXT).read(TEXTS).batch(np.arange(3))
    assert inputs.shape[:2] == mask.shape and inputs.shape[2] == 384 and inputs.dtype == torch.float32
    final, _ = StateEncoder(TEXT["model_name"], 6, 16, 8, None, progress=False).encode(TEXTS).batch(np.arange(3))
    with torch.no_grad():
        states = model.minilm_blocks[0](inputs, mask.bool())
    real = mask.bool()
    torch.testing.assert_close(states[real], final[real], atol=3e-2, rtol=1e-2)   # float16 cache rounding


def test_minilm_encoder_ignores_padding_and_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = Seq2SeqRetriever(MINILM).eval()
    sources = EncoderReader.for_model(MINILM, TEXT).read(TEXTS)
    decoder = decoder_input(1)
    alone, alone_mask = sources.batch(np.array([0]))
    padded, padded_mask = sources.batch(np.array([0, 1]))
    assert padded.shape[1] > alone.shape[1]
    with torch.no_grad():
        short_logits, _ = model(alone, alone_mask, decoder)
        padded_logits, _ = model(padded, padded_mask, decoder.expand(2, -1))
    torch.testing.assert_close(short_logits[0], padded_logits[0], atol=1e-5, rtol=1e-4)
    # training moves the tuned MiniLM copy; the checkpoint keeps it
    with torch.no_grad():
        model.minilm_blocks[0].query.weight.add_(0.01)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    torch.testing.assert_close(loaded(padded, padded_mask, decoder.expand(2, -1))[0],
                               model(padded, padded_mask, decoder.expand(2, -1))[0])


def test_all_layers_frozen_reads_final_states_with_no_minilm_copy():
    frozen = dataclasses.replace(MINILM, tuned_layers=0)
    model = Seq2SeqRetriever(frozen)
    assert len(model.minilm_blocks) == 0
    reader = EncoderReader.for_model(frozen, TEXT)
    assert reader.states.layer == 6
    inputs, mask = reader.read(TEXTS[:1]).batch(np.arange(1))
    logits, _ = model(inputs, mask, decoder_input(1))
    assert logits.shape == (1, 3, 20)


def test_each_encoder_refuses_the_other_kind_of_input():
    wordpiece = dataclasses.replace(MINILM, encoder="wordpiece", tuned_layers=0, enc_vocab_size=100)
    ids, mask = EncoderReader.for_model(wordpiece, TEXT).read(TEXTS).batch(np.arange(3))
    assert ids.dtype == torch.long and ids.dim() == 2
    with pytest.raises(ValueError, match="minilm encoder reads 3-d inputs"):
        Seq2SeqRetriever(MINILM)(ids, mask, decoder_input(3))
    states, mask = EncoderReader.for_model(MINILM, TEXT).read(TEXTS).batch(np.arange(3))
    with pytest.raises(ValueError, match="wordpiece encoder reads 2-d inputs"):
        Seq2SeqRetriever(wordpiece)(states, mask, decoder_input(3))
    with pytest.raises(ValueError, match="no token embeddings"):
        init_encoder_embeddings(Seq2SeqRetriever(MINILM), torch.zeros(30522, 384))
    with pytest.raises(ValueError, match="not one of"):
        EncoderReader("bert", 0, 16, TEXT)
    with pytest.raises(ValueError, match="minilm_tuned_layers must be in"):
        EncoderReader("minilm", 7, 16, TEXT)
