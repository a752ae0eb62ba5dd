"""SFT examples: graded retrieval pairs, indexing of every item, a deterministic mix.

Also home of `write_synthetic_sids`, the stand-in semantic_ids artifact the generative
tests train on (variable-length SIDs: unique 3-level codes for seen items, shared 2-level
buckets for cold ones, as SARQ produces).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sid_models.generative.borrowed import BorrowConfig, bm25_ranks, dense_ranks, lent_pairs
from sid_models.generative.data import SftDataset, SftTables, read_sid_table, vocab_for
from sid_models.generative.inputs import EncoderReader, tokenize
from sid_models.text.views import ViewConfig, query_like_views, typo
from sid_models.generative.vocab import BOS, EOS, PAD, SidVocab
from sid_models.text.encoder import load_tokenizer

VIEWS = ViewConfig(views=2, min_words=2, max_words=3, typo_rate=0.5)
WORDPIECE = EncoderReader("wordpiece", 0, 16, {"model_name": "unused", "batch_size": 8})
NO_LENDING = BorrowConfig(channels=("bm25",), depth=5, per_item=0, weight=0.5)
BM25 = {"k1": 1.2, "b": 0.75, "method": "lucene", "stopwords": "en", "stemmer": "english"}


def synthetic_sids(prepared) -> pd.DataFrame:
    items = prepared.items.reset_index(drop=True)
    segment = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    categories = {name: code for code, name in enumerate(sorted(items["category"].unique()))}
    first = [categories[name] for name in items["category"]]
    second = [zlib.crc32(title.split()[0].encode()) % 4 for title in items["title"]]
    rows, rank = [], {}
    for item, a, b in zip(items["item_id"], first, second):
        if segment.get(item, "cold") == "cold":
            sid = [a, b]
        else:
            rank[(a, b)] = rank.get((a, b), -1) + 1
            sid = [a, b, rank[(a, b)]]
        rows.append((item, sid))
    table = pd.DataFrame(rows, columns=["item_id", "sid"])
    table["length"] = table["sid"].map(len)
    table["segment"] = [segment.get(item, "cold") for item in table["item_id"]]
    table["bucket_size"] = table.groupby(table["sid"].map(tuple))["item_id"].transform("size")
    return table


def write_synthetic_sids(prepared, folder: Path) -> Path:
    """A semantic_ids folder (sids.parquet, tiger_sids.parquet, vocab.json) for `prepared`."""
    folder.mkdir(parents=True, exist_ok=True)
    table = synthetic_sids(prepared)
    table.to_parquet(folder / "sids.parquet", index=False)
    tiger = table.copy()
    tiger["sid"] = [[sid[0], sid[1], index % 7] for index, sid in enumerate(tiger["sid"])]
    tiger["length"] = 3
    tiger.to_parquet(folder / "tiger_sids.parquet", index=False)
    variants = {name: SidVocab.for_sids([tuple(sid) for sid in frame["sid"]]).to_json()
                for name, frame in (("sarq_acrq", table), ("tiger", tiger))}
    (folder / "vocab.json").write_text(json.dumps({**variants["sarq_acrq"], "shipped": "sarq_acrq",
                                                   "variants": variants}))
    return folder


@pytest.fixture(scope="module")
def sft_inputs(small_prepared, tmp_path_factory):
    folder = write_synthetic_sids(small_prepared, tmp_path_factory.mktemp("sids"))
    table = read_sid_table(folder, "sarq_acrq")
    vocab = vocab_for(folder, "sarq_acrq")
    return (SftTables.build(small_prepared, table, vocab, WORDPIECE, vocab.levels + 1, VIEWS, seed=0,
                            borrow=NO_LENDING, bm25_params=BM25), vocab, table)


def test_retrieval_pairs_are_the_relevant_training_judgments_with_graded_weights(small_prepared, sft_inputs):
    tables, _, _ = sft_inputs
    relevant = small_prepared.relevant("train")
    assert len(tables.pair_query) == len(relevant)
    expected = (relevant["relevance"].to_numpy() - 1.0) / 2.0
    np.testing.assert_allclose(tables.pair_weight, expected, rtol=1e-6)
    assert tables.pair_weight.min() > 0 and tables.pair_weight.max() <= 1.0


def test_every_item_has_its_sid_as_indexing_target(small_prepared, sft_inputs):
    tables, vocab, table = sft_inputs
    sid_of = dict(zip(table["item_id"], table["sid"]))
    for row, item in enumerate(small_prepared.items["item_id"]):
        target = [token for token in tables.item_targets[row] if token != PAD]
        assert target == vocab.encode(tuple(sid_of[item]))


def test_epoch_mix_follows_the_indexing_ratio_and_walks_all_items(sft_inputs):
    tables, _, _ = sft_inputs
    dataset = SftDataset(tables, indexing_ratio=0.5, seed=3, query_vector_dropout=0.0)
    assert dataset.n_indexing == dataset.n_pairs
    seen = set()
    n_items = tables.n_items
    for epoch in range(n_items // dataset.n_indexing + 1):
        dataset.set_epoch(epoch)
        indices = np.arange(dataset.n_pairs, len(dataset))
        slot = epoch * dataset.n_indexing + indices - dataset.n_pairs
        seen.update(dataset.item_order[slot % n_items].tolist())
    assert seen == set(range(n_items))


def test_batches_are_teacher_forced_and_deterministic(sft_inputs):
    tables, _, _ = sft_inputs
    dataset = SftDataset(tables, indexing_ratio=0.3, seed=1, query_vector_dropout=0.0)
    indices = [0, 1, len(dataset) - 1]
    first, again = dataset.batch(indices), dataset.batch(indices)
    for key in first:
        assert np.array_equal(first[key].numpy(), again[key].numpy())
    assert (first["decoder_input_ids"][:, 0] == BOS).all()
    targets = first["targets"]
    assert np.array_equal(first["decoder_input_ids"][:, 1:].numpy(),
                          targets[:, :-1].masked_fill(targets[:, :-1] == EOS, PAD).numpy())
    assert first["weight"][-1] == 1.0


def test_a_missing_sid_is_an_error_naming_the_item(small_prepared, sft_inputs):
    _, vocab, table = sft_inputs
    with pytest.raises(ValueError, match="no SID"):
        SftTables.build(small_prepared, table.iloc[1:], vocab, WORDPIECE, vocab.levels + 1, VIEWS, seed=0,
                        borrow=NO_LENDING, bm25_params=BM25)


def test_indexing_walks_show_the_title_then_each_query_like_view(sft_inputs, small_prepared):
    tables, _, _ = sft_inputs
    dataset = SftDataset(tables, indexing_ratio=0.5, seed=3, query_vector_dropout=0.0)
    n_items = tables.n_items
    first_slot_item = dataset.item_order[0]
    views = query_like_views(small_prepared.items["title"].astype(str).tolist(), VIEWS, seed=0)[first_slot_item]
    item_text = small_prepared.item_text().iloc[first_slot_item]
    for walk, text in enumerate([item_text, views[0], views[1], item_text]):
        slot = walk * n_items                      # the first slot of walk `walk` indexes item_order[0]
        dataset.set_epoch(slot // dataset.n_indexing)
        index = dataset.n_pairs + slot % dataset.n_indexing
        source = dataset.batch([index])["inputs"][0].numpy()
        ids, mask = tokenize(load_tokenizer(), [text], 16)
        assert np.array_equal(source, ids[0, :int(mask.sum())]), (walk, text)


def text_vector(text: str) -> np.ndarray:
    """A vector that tells texts apart: the query-vector stand-in of the tests below."""
    return np.random.default_rng(zlib.crc32(text.encode())).standard_normal(4).astype(np.float32)


@pytest.mark.parametrize("own_vectors", [False, True])
def test_indexing_views_read_the_title_vector_or_their_own(small_prepared, sft_inputs, own_vectors):
    _, vocab, table = sft_inputs
    queries = small_prepared.queries["text"].astype(str).tolist()
    item_texts = small_prepared.item_text().tolist()
    sci_vectors = (np.stack([text_vector(text) for text in queries]), np.stack([text_vector(t) for t in item_texts]))
    tables = SftTables.build(small_prepared, table, vocab, WORDPIECE, vocab.levels + 1, VIEWS, seed=0,
                             borrow=NO_LENDING, bm25_params=BM25, sci_vectors=sci_vectors,
                             encode_views=(lambda texts: np.stack([text_vector(t) for t in texts])) if own_vectors else None)
    dataset = SftDataset(tables, indexing_ratio=0.5, seed=3, query_vector_dropout=0.0)
    n_items = tables.n_items
    item = dataset.item_order[0]
    views = query_like_views(small_prepared.items["title"].astype(str).tolist(), VIEWS, seed=0)[item]
    for walk, text in enumerate([item_texts[item], views[0], views[1], item_texts[item]]):
        slot = walk * n_items
        dataset.set_epoch(slot // dataset.n_indexing)
        vector = dataset.batch([dataset.n_pairs + slot % dataset.n_indexing])["query_vectors"][0].numpy()
        expected = text_vector(text if own_vectors else item_texts[item])
        np.testing.assert_allclose(vector, expected, rtol=1e-6, err_msg=f"walk {walk}: {text!r}")
    pair_vector = dataset.batch([0])["query_vectors"][0].numpy()        # a retrieval pair reads its query's
    train_queries = small_prepared.split_queries("train").reset_index(drop=True)["text"].astype(str)
    np.testing.assert_allclose(pair_vector, text_vector(train_queries.iloc[tables.pair_query[0]]), rtol=1e-6)
    with pytest.raises(ValueError, match="needs sci_vectors"):
        SftTables.build(small_prepared, table, vocab, WORDPIECE, vocab.levels + 1, VIEWS, seed=0, borrow=NO_LENDING,
                        bm25_params=BM25, encode_views=lambda texts: np.zeros((len(texts), 4), np.float32))


def test_query_vector_dropout_zeroes_a_seeded_share_of_retrieval_vectors_and_no_indexing_vector(small_prepared,
                                                                                                  sft_inputs):
    _, vocab, table = sft_inputs
    queries = small_prepared.queries["text"].astype(str).tolist()
    item_texts = small_prepared.item_text().tolist()
    sci_vectors = (np.stack([text_vector(text) for text in queries]), np.stack([text_vector(t) for t in item_texts]))
    tables = SftTables.build(small_prepared, table, vocab, WORDPIECE, vocab.levels + 1, VIEWS, seed=0,
                             borrow=NO_LENDING, bm25_params=BM25, sci_vectors=sci_vectors)
    kept = SftDataset(tables, indexing_ratio=0.5, seed=3, query_vector_dropout=0.0)
    dropping = SftDataset(tables, indexing_ratio=0.5, seed=3, query_vector_dropout=0.5)
    every = np.arange(len(dropping))
    pairs = every < dropping.n_pairs
    shares = []
    for epoch in (0, 1):
        kept.set_epoch(epoch)
        dropping.set_epoch(epoch)
        full, dropped = kept.batch(every)["query_vectors"].numpy(), dropping.batch(every)["query_vectors"].numpy()
        zeroed = ~dropped.any(axis=1)
        assert not zeroed[~pairs].any()                             # indexing examples always read their vector
        np.testing.assert_array_equal(dropped[~zeroed], full[~zeroed])
        shares.append(zeroed[pairs])
        assert 0.4 < zeroed[pairs].mean() < 0.6
        np.testing.assert_array_equal(dropping.batch(every)["query_vectors"].numpy(), dropped)   # seeded by epoch
    assert (shares[0] != shares[1]).any()                           # a new draw each epoch
    with pytest.raises(ValueError, match="query_vector_dropout"):
        SftDataset(tables, indexing_ratio=0.5, seed=3, query_vector_dropout=1.5)


def test_query_like_views_are_short_seeded_and_name_the_product_type():
    titles = ["Toro Personal Pace Recycler 22 in. Variable Speed Self-Propelled Gas Lawn Mower with Briggs Engine",
              "Delta Vero 1-Handle Shower Only Faucet Trim Kit in Chrome"]
    clean = ViewConfig(views=3, min_words=2, max_words=3, typo_rate=0.0)
    views = query_like_views(titles, clean, seed=1)
    assert views == query_like_views(titles, clean, seed=1)
    assert all(2 <= len(view.split()) <= 3 for item in views for view in item)
    assert views[0][0].endswith("lawn mower") and views[1][0].endswith("trim kit")
    assert views[0][1].startswith("toro ") and views[0][1].endswith("mower")


def test_typos_change_one_word_or_one_word_boundary():
    rng = np.random.default_rng(0)
    for _ in range(50):
        slipped = typo("cordless hammer drill", rng)
        assert slipped != "cordless hammer drill"
        assert abs(len(slipped.replace(" ", "")) - len("cordlesshammerdrill")) <= 1


def test_lent_pairs_go_to_unreached_unjudged_items_best_ranked_first():
    # query 0 ranks items 5, 6, 1; query 1 ranks 6, 5, 7; item 1 is reached, item 7 judged for query 1
    bm25 = np.array([[5, 6, 1], [6, 5, 7]])
    dense = np.array([[6, 5, -1], [5, 7, 6]])
    judged = pd.DataFrame({"query_row": [1], "item_row": [7]})
    reached = np.zeros(8, dtype=bool)
    reached[1] = True
    query, item = lent_pairs([bm25], judged, reached, per_item=1)
    assert list(zip(query, item)) == [(0, 5), (1, 6)]
    query, item = lent_pairs([bm25], judged, reached, per_item=2)
    assert list(zip(query, item)) == [(0, 5), (0, 6), (1, 5), (1, 6)]
    # in both channels: the worst of the two ranks counts (item 5: 0/1 for query 0, 1/0 for query 1 -> tie,
    # the earlier query wins); item 6 is third in dense for query 1, second for query 0
    query, item = lent_pairs([bm25, dense], judged, reached, per_item=1)
    assert list(zip(query, item)) == [(0, 5), (0, 6)]
    assert lent_pairs([bm25], judged, reached, per_item=0)[0].size == 0


def test_channel_ranks_are_the_best_items_first():
    query_vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    item_vectors = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.0, 0.2]], dtype=np.float32)
    assert dense_ranks(query_vectors, item_vectors, 3).tolist() == [[0, 2, 1], [1, 2, 3]]
    titles = ["cordless drill kit", "garden hose reel", "drill bit set", "hose nozzle"]
    ranks = bm25_ranks(["drills", "nothing here"], titles, BM25, 3)
    assert set(ranks[0, :2]) == {0, 2} and ranks[0, 2] == -1      # stemming: drills -> drill
    assert (ranks[1] == -1).all()


def test_lent_queries_join_the_retrieval_pairs(small_prepared, sft_inputs):
    tables, vocab, table = sft_inputs
    borrow = BorrowConfig(channels=("bm25",), depth=10, per_item=2, weight=0.25)
    lending = SftTables.build(small_prepared, table, vocab, WORDPIECE, vocab.levels + 1, VIEWS, seed=0,
                              borrow=borrow, bm25_params=BM25)
    judged_pairs = len(tables.pair_query)
    assert lending.n_lent > 0 and len(lending.pair_query) == judged_pairs + lending.n_lent
    np.testing.assert_array_equal(lending.pair_query[:judged_pairs], tables.pair_query)
    lent_items = lending.pair_item[judged_pairs:]
    assert not np.isin(lent_items, tables.pair_item).any()          # only items no training query reaches
    assert np.bincount(lent_items).max() <= 2
    assert (lending.pair_weight[judged_pairs:] == 0.25).all()
    queries = small_prepared.split_queries("train").reset_index(drop=True)
    items = small_prepared.items.reset_index(drop=True)
    judged = small_prepared.split_judgments("train")
    judged_keys = set(zip(judged["query_id"].astype(str), judged["item_id"].astype(str)))
    lent = set(zip(queries["query_id"].astype(str).to_numpy()[lending.pair_query[judged_pairs:]],
                   items["item_id"].astype(str).to_numpy()[lent_items]))
    assert not lent & judged_keys
    with pytest.raises(ValueError, match="dense_vectors"):
        SftTables.build(small_prepared, table, vocab, WORDPIECE, vocab.levels + 1, VIEWS, seed=0,
                        borrow=BorrowConfig(("dense",), 10, 1, 0.5), bm25_params=BM25)


@pytest.mark.parametrize("section, message", [
    ({"channels": ["bm25", "clicks"], "depth": 5, "per_item": 1, "weight": 0.5}, "subset"),
    ({"channels": [], "depth": 5, "per_item": 1, "weight": 0.5}, "subset"),
    ({"channels": ["bm25"], "depth": 0, "per_item": 1, "weight": 0.5}, "depth"),
    ({"channels": ["bm25"], "depth": 5, "per_item": 1, "weight": 0.0}, "weight"),
])
def test_bad_borrowed_query_settings_are_named(section, message):
    with pytest.raises(ValueError, match=message):
        BorrowConfig.from_params(section)
