"""Preference batches: all-sequence (MLGC) vs one drawn pair (pairwise) per query, and RDRW similarity sources."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sid_models.align.batches import PreferenceDataset, batch_similarity, build_preference_tensors, make_batch
from sid_models.generative.inputs import WordPieces
from sid_models.generative.vocab import SidVocab

VOCAB = SidVocab((4, 4, 4))


def preference_table():
    rows = []
    for q in range(3):
        for rank, sid in enumerate([(q, 0, 1), (q, 1, 1)]):
            rows.append((f"q{q}", list(sid), "positive", 1.0 - 0.5 * rank, rank))
        for rank, sid in enumerate([(q, 2, 0), (q, 3, 0), ((q + 1) % 4, 0, 0)]):
            rows.append((f"q{q}", list(sid), "pseudo_negative" if rank else "judged_negative", 1.0, rank))
    return pd.DataFrame(rows, columns=["query_id", "sid", "role", "weight", "rank"])


def tensors(with_vectors=False):
    table = preference_table()
    vectors = None
    if with_vectors:
        rng = np.random.default_rng(0)
        vectors = {tuple(sid): rng.normal(size=8).astype(np.float32) for sid in table["sid"]}
    ids = np.array([[5, 6, 0], [7, 0, 0], [8, 9, 10]])
    return build_preference_tensors(table, VOCAB, ["q0", "q1", "q2"], WordPieces(ids, ids > 0), max_dec_len=4,
                                    sid_vectors=vectors), vectors


def test_mlgc_batch_holds_every_positive_and_negative_of_each_query():
    data, _ = tensors()
    batch = make_batch(data, [0, 2], pairwise=False)
    assert batch["pos_index"].shape == (2, 2) and batch["neg_index"].shape == (2, 3)
    assert len(batch["targets"]) == 10
    assert batch["pos_weight"].tolist() == [[1.0, 0.5], [1.0, 0.5]]
    assert batch["inputs"].shape == (2, 3) and batch["local_owner"].tolist() == [0] * 5 + [1] * 5


def test_pairwise_batch_draws_one_pair_per_query_as_a_function_of_seed_and_epoch():
    data, _ = tensors()
    dataset = PreferenceDataset(data, pairwise=True, seed=1)
    first = dataset.batch([0, 1, 2])
    assert first["pos_index"].shape == (3, 1) and first["neg_index"].shape == (3, 1)
    assert torch.equal(first["targets"], dataset.batch([0, 1, 2])["targets"])
    draws = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        draws.add(tuple(map(tuple, dataset.batch([0])["targets"].tolist())))
    assert len(draws) > 1


def test_sci_item_similarity_is_the_cosine_of_the_item_vectors():
    data, vectors = tensors(with_vectors=True)
    batch = make_batch(data, [1], pairwise=False)
    similarity = batch_similarity(batch, hidden_at_eos=torch.zeros(len(batch["targets"]), 4), source="sci_item")
    positive, negative = vectors[(1, 1, 1)], vectors[(2, 0, 0)]
    expected = positive @ negative / np.linalg.norm(positive) / np.linalg.norm(negative)
    assert float(similarity[0, 1, 2]) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="sci_item"):
        batch_similarity(make_batch(tensors()[0], [1], pairwise=False), torch.zeros(5, 4), "sci_item")


def test_unknown_similarity_source_is_an_error():
    data, _ = tensors()
    with pytest.raises(ValueError, match="hidden"):
        batch_similarity(make_batch(data, [0], pairwise=False), torch.zeros(5, 4), "cosine")
