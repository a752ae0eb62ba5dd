"""Constrained decoding: the tensorised trie, batched beam search, the reference decoder."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sid_models.generative.model import GenerativeConfig, Seq2SeqRetriever
from sid_models.generative.trie import (DENSE_MASK_BYTES, DictTrieConstraint, SidTrie, TrieConstraint,
                                        UnconstrainedConstraint,
                                        beam_search, constrained_beam_search, invalid_rate)
from sid_models.generative.vocab import BOS, EOS, PAD, SidVocab

ENC_VOCAB = 40


@st.composite
def tries(draw):
    """A vocabulary and 1-30 distinct SIDs of 1-3 levels (some SIDs prefixes of others)."""
    codes = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    sid = st.integers(1, len(codes)).flatmap(
        lambda length: st.tuples(*(st.integers(0, codes[level] - 1) for level in range(length))))
    sids = draw(st.lists(sid, min_size=1, max_size=30, unique=True))
    return SidVocab(codes), sids


def tiny_model(vocab: SidVocab, seed: int) -> Seq2SeqRetriever:
    torch.manual_seed(seed)
    config = GenerativeConfig(encoder="wordpiece", tuned_layers=0, enc_vocab_size=ENC_VOCAB, dec_vocab_size=vocab.size, d_model=16, n_heads=2,
                              n_enc_layers=1, n_dec_layers=1, d_ff=32, dropout=0.0, max_enc_len=8,
                              max_dec_len=vocab.levels + 1, enc_pad_id=0, dec_pad_id=0, query_vector_dim=0)
    return Seq2SeqRetriever(config).eval()


def queries(seed: int, batch: int = 3):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, ENC_VOCAB, (batch, 6), generator=generator)
    return input_ids, torch.ones_like(input_ids)


def brute_force(model, input_ids, mask, vocab, sids, length_penalty):
    """Score of every SID for every query by teacher forcing: [B, n_sids]."""
    width = vocab.levels + 1
    targets = torch.full((len(sids), width), PAD)
    for row, sid in enumerate(sids):
        tokens = vocab.encode(sid)
        targets[row, :len(tokens)] = torch.tensor(tokens)
    decoder = torch.cat([torch.full((len(sids), 1), BOS), targets[:, :-1]], dim=1)
    scores = []
    for query in range(input_ids.shape[0]):
        logits, _ = model(input_ids[query:query + 1].expand(len(sids), -1), mask[query:query + 1].expand(len(sids), -1),
                          decoder)
        log_probs = torch.log_softmax(logits, -1).gather(2, targets[:, :, None]).squeeze(2)
        real = targets != PAD
        total = (log_probs * real).sum(1)
        scores.append(total / real.sum(1).float() ** length_penalty)
    return torch.stack(scores)


@settings(max_examples=20, deadline=None)
@given(tries(), st.integers(0, 10_000), st.integers(1, 8), st.sampled_from([0.0, 0.7]))
def test_every_returned_sid_is_in_the_trie(trie_spec, seed, beams, length_penalty):
    vocab, sids = trie_spec
    trie = SidTrie.build(sids, vocab)
    model = tiny_model(vocab, seed)
    input_ids, mask = queries(seed)
    result = beam_search(model, input_ids, mask, beams, trie.max_length + 1, TrieConstraint(trie), length_penalty)
    assert invalid_rate(result, trie) == 0.0
    assert result.finished.sum(1).tolist() == [min(beams, len(sids))] * input_ids.shape[0]
    for rows, sid_rows, finished in zip(result.tokens.tolist(), result.state.sid.view(result.finished.shape).tolist(),
                                        result.finished.tolist()):
        for tokens, sid, done in zip(rows, sid_rows, finished):
            if done:
                assert vocab.decode(tokens) == trie.sids[sid]


@settings(max_examples=20, deadline=None)
@given(tries(), st.integers(0, 10_000), st.sampled_from([0.0, 0.7]))
def test_beam_covering_the_trie_equals_brute_force_enumeration(trie_spec, seed, length_penalty):
    vocab, sids = trie_spec
    trie = SidTrie.build(sids, vocab)
    model = tiny_model(vocab, seed)
    input_ids, mask = queries(seed)
    sid_index, scores = constrained_beam_search(model, input_ids, mask, trie, beams=len(trie.sids),
                                                length_penalty=length_penalty)
    expected = brute_force(model, input_ids, mask, vocab, trie.sids, length_penalty)
    for query in range(input_ids.shape[0]):
        assert sorted(sid_index[query].tolist()) == list(range(len(trie.sids)))
        torch.testing.assert_close(scores[query], expected[query, sid_index[query]], atol=1e-4, rtol=1e-4)
        assert (scores[query][:-1] >= scores[query][1:] - 1e-6).all()


@pytest.mark.parametrize("dense_mask_bytes", [DENSE_MASK_BYTES, 0], ids=["dense_mask", "csr_scatter"])
@settings(max_examples=15, deadline=None)
@given(tries(), st.integers(0, 10_000), st.integers(1, 8))
def test_tensor_trie_and_dict_reference_return_identical_beams(dense_mask_bytes, trie_spec, seed, beams):
    vocab, sids = trie_spec
    trie = SidTrie.build(sids, vocab, dense_mask_bytes=dense_mask_bytes)
    assert (trie.child_mask is None) == (dense_mask_bytes == 0)
    model = tiny_model(vocab, seed)
    input_ids, mask = queries(seed)
    fast = beam_search(model, input_ids, mask, beams, trie.max_length + 1, TrieConstraint(trie), 0.5)
    reference = beam_search(model, input_ids, mask, beams, trie.max_length + 1, DictTrieConstraint(sids, vocab), 0.5)
    assert torch.equal(fast.tokens, reference.tokens)
    assert torch.equal(fast.scores, reference.scores)


def test_eos_is_allowed_exactly_where_a_sid_ends():
    vocab = SidVocab((3, 3))
    trie = SidTrie.build([(0,), (0, 1), (2, 2)], vocab)
    constraint = TrieConstraint(trie)
    state = constraint.start(1, torch.device("cpu"))
    root = constraint.allowed(state, torch.tensor([[BOS]]))[0]
    assert root.nonzero().flatten().tolist() == [vocab.token(0, 0), vocab.token(0, 2)]
    after_zero = constraint.advance(state, torch.tensor([0]), torch.tensor([vocab.token(0, 0)]))
    one_code = torch.tensor([[BOS, vocab.token(0, 0)]])
    assert constraint.allowed(after_zero, one_code)[0].nonzero().flatten().tolist() == [EOS, vocab.token(1, 1)]
    after_two = constraint.advance(state, torch.tensor([0]), torch.tensor([vocab.token(0, 2)]))
    assert constraint.allowed(after_two, one_code)[0].nonzero().flatten().tolist() == [vocab.token(1, 2)]
    at_leaf = constraint.advance(after_zero, torch.tensor([0]), torch.tensor([vocab.token(1, 1)]))
    two_codes = torch.tensor([[BOS, vocab.token(0, 0), vocab.token(1, 1)]])
    assert constraint.allowed(at_leaf, two_codes)[0].nonzero().flatten().tolist() == [EOS]


def test_unconstrained_decoding_can_invent_sids_and_the_rate_counts_them():
    vocab = SidVocab((4, 4))
    trie = SidTrie.build([(0, 0), (1, 2)], vocab)
    model = tiny_model(vocab, 0)
    input_ids, mask = queries(0)
    free = beam_search(model, input_ids, mask, 8, trie.max_length + 1, UnconstrainedConstraint(vocab, 2), 0.0)
    assert free.finished.all()
    assert invalid_rate(free, trie) >= 6 / 8      # at most the 2 real SIDs among 8 distinct beams


def test_buckets_hold_each_item_once_and_invert_to_its_sid():
    from sid_models.generative.retriever import Buckets

    vocab = SidVocab((3, 3))
    item_sids = [(2, 2), (0,), (0, 1), (0,), (2, 2), (2, 2)]
    trie = SidTrie.build(item_sids, vocab)
    buckets = Buckets.build(trie, item_sids)
    assert buckets.sizes().tolist() == [2, 1, 3]              # trie order: (0,), (0, 1), (2, 2)
    assert [buckets.items(sid).tolist() for sid in range(3)] == [[1, 3], [2], [0, 4, 5]]
    assert buckets.items_of([2, 0]).tolist() == [0, 4, 5, 1, 3]
    assert buckets.items_of([]).tolist() == []
    sid_of_row = buckets.sid_of_row()
    assert [trie.sids[sid] for sid in sid_of_row] == item_sids
