"""On a tiny real model: vanilla pairwise DPO squeezes the other positive, MLGC raises both."""
from __future__ import annotations

import copy

import numpy as np

import pandas as pd
import pytest
import torch

from sid_models.align.batches import (SequenceScorer, build_preference_tensors, make_batch, reference_logprobs,
                                      score_batch, with_reference)
from sid_models.align.losses import PreferenceLossConfig
from sid_models.align.trainer import AlignmentConfig, alignment_loss
from sid_models.generative.inputs import WordPieces
from sid_models.generative.model import GenerativeConfig, Seq2SeqRetriever
from sid_models.generative.vocab import SidVocab

Y1, Y2, NEGATIVE = (0, 1), (2, 3), (1, 0)
STEPS = 40


def tiny_setup():
    torch.manual_seed(0)
    vocab = SidVocab((4, 4))
    model = Seq2SeqRetriever(GenerativeConfig(encoder="wordpiece", tuned_layers=0, enc_vocab_size=16, dec_vocab_size=vocab.size, d_model=32, n_heads=2,
                                              n_enc_layers=1, n_dec_layers=1, d_ff=64, dropout=0.0, max_enc_len=4,
                                              max_dec_len=3, enc_pad_id=0, dec_pad_id=0,
                                              query_vector_dim=0))
    preferences = pd.DataFrame({"query_id": ["q"] * 3, "sid": [list(Y1), list(Y2), list(NEGATIVE)],
                                "role": ["positive", "positive", "pseudo_negative"], "weight": [1.0, 1.0, 1.0],
                                "rank": [0, 1, 0]})
    data = build_preference_tensors(preferences, vocab, ["q"], WordPieces(np.array([[5, 6, 7, 0]]), np.array([[1, 1, 1, 0]])),
                                    max_dec_len=3)
    data = with_reference(data, reference_logprobs(copy.deepcopy(model), data, batch_queries=4))
    return model, data


def positive_logprobs(model, data) -> list[float]:
    with torch.no_grad():
        batch = make_batch(data, [0], pairwise=False)
        logp, _ = score_batch(SequenceScorer(model), batch)
    return logp.sum(-1)[batch["pos_index"][0]].tolist()


def train(model, data, batch, config):
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(STEPS):
        loss, _ = alignment_loss(SequenceScorer(model), batch, config, weighter=None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def loss_config(mlgc: bool, sft_weight: float) -> AlignmentConfig:
    return AlignmentConfig(loss=PreferenceLossConfig(beta=0.5, margin=0.0, reference_free=False, tlgd=mlgc,
                                                     mlgc=mlgc, sft_weight=sft_weight,
                                                     contrast="per_positive", detach_levels=0),
                           rdrw=False, similarity="hidden")


def test_vanilla_pairwise_dpo_lowers_the_other_positive():
    model, data = tiny_setup()
    before = positive_logprobs(model, data)
    # Vanilla DPO's one-positive pair (Y1 chosen, NEGATIVE rejected).
    pair = make_batch(data, [0], pairwise=False)
    pair = {**pair, "targets": pair["targets"][[0, 2]], "reference_logp": pair["reference_logp"][[0, 2]],
            "local_owner": pair["local_owner"][[0, 2]], "pos_index": torch.tensor([[0]]),
            "pos_weight": torch.ones(1, 1), "neg_index": torch.tensor([[1]])}
    train(model, data, pair, loss_config(mlgc=False, sft_weight=0.0))
    after = positive_logprobs(model, data)
    assert after[0] > before[0]
    assert after[1] < before[1] - 0.1


@pytest.mark.parametrize("sft_weight", [0.0, 0.2])
def test_mlgc_raises_both_positives(sft_weight):
    model, data = tiny_setup()
    before = positive_logprobs(model, data)
    batch = make_batch(data, [0], pairwise=False)
    assert batch["pos_index"].shape == (1, 2)
    train(model, data, batch, loss_config(mlgc=True, sft_weight=sft_weight))
    after = positive_logprobs(model, data)
    assert after[0] > before[0] + 0.1 and after[1] > before[1] + 0.1
