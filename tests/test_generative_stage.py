"""The sft_checkpoint stage and the retriever it feeds: valid SIDs, items out, SCI-ordered buckets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sid_models.generative.retriever import GenerativeRetriever, load_retriever
from sid_models.generative.stage import run, validate
from sid_models.params import deep_merge
from sid_models.sci.towers import DualTower, TowerConfig
from test_generative_data import write_synthetic_sids
from test_sft import TINY_MODEL


@pytest.fixture(scope="module")
def stage_inputs(small_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    prepared = small_prepared.save(root / "prepared_dataset")
    sids = write_synthetic_sids(small_prepared, root / "semantic_ids")
    towers_folder = root / "sci_towers"
    config = TowerConfig(in_dim=384, out_dim=256, hidden_dim=768, n_blocks=1, dropout=0.0, learn_projection=True)
    torch.manual_seed(0)
    projection = torch.linalg.qr(torch.randn(config.in_dim, config.out_dim))[0].t().contiguous()
    DualTower(config, projection).save(towers_folder)
    vectors = np.random.default_rng(0).normal(size=(len(small_prepared.items), config.out_dim)).astype(np.float32)
    np.save(towers_folder / "item_item_view.npy", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    # the query views the default recipe's query-vector memory reads (sci_towers writes them)
    rng = np.random.default_rng(1)
    np.save(towers_folder / "item_query_view.npy", rng.normal(size=vectors.shape).astype(np.float32))
    np.save(towers_folder / "queries.npy",
            rng.normal(size=(len(small_prepared.queries), config.out_dim)).astype(np.float32))
    index = root / "sci_index"
    index.mkdir()
    return {"prepared_dataset": prepared, "semantic_ids": sids, "sci_towers": towers_folder, "sci_index": index}


@pytest.fixture(scope="module")
def stage_output(small_params, stage_inputs, tmp_path_factory):
    params = deep_merge(small_params, {
        "generative": {"preset": "cpu", "device": "cpu", "init_from_minilm": False,
                       "presets": {"cpu": {"model": TINY_MODEL, "sft": {"steps": 20, "batch_size": 32}}}},
        "sft": {"warmup_steps": 4, "checkpoint_every": 20, "log_every": 10, "lr": 0.005, "valid_max_queries": 24,
                # both channels, so the stage reads BM25 and the towers' item views for lending
                "borrowed_queries": {"channels": ["bm25", "dense"], "depth": 10, "per_item": 1}},
        "decode": {"beam_size": 5, "batch_size": 16},
    })
    out = tmp_path_factory.mktemp("sft_checkpoint")
    metadata = run(params, stage_inputs, out)
    return out, metadata


def test_stage_writes_both_models_and_validation_figures(stage_output):
    out, metadata = stage_output
    for folder in (out, out / "tiger"):
        for name in ("model.pt", "config.json", "vocab.json", "train_state.pt", "metrics.jsonl"):
            assert (folder / name).is_file(), folder / name
    validation = json.loads((out / "validation.json").read_text())
    assert set(validation) == {"sarq_acrq", "tiger"}
    for figures in validation.values():
        assert figures["valid_sid_rate"] == 1.0
        assert 0.0 <= figures["unconstrained_invalid_rate"] <= 1.0
        assert 0.0 <= figures["recall@10"] <= 1.0
    assert metadata["sarq_acrq_valid_sid_rate"] == 1.0


def test_beam_order_validation_is_the_bucket_pool_1_retriever(stage_output, stage_inputs, small_prepared):
    out, _ = stage_output
    figures = json.loads((out / "validation.json").read_text())["sarq_acrq"]
    strict = load_retriever(out, stage_inputs["semantic_ids"], stage_inputs["prepared_dataset"], bucket_pool=1)
    again = validate(strict, small_prepared, 24)
    assert figures["beam_order_recall@10"] == pytest.approx(again["recall@10"])
    assert figures["beam_order_ndcg@10"] == pytest.approx(again["ndcg@10"])
    assert strict.bucket_pool == 1 and again["beam_order_recall@10"] == pytest.approx(again["recall@10"])


def test_the_stage_lends_training_queries_to_unreached_items(stage_output, small_prepared):
    out, metadata = stage_output
    figures = json.loads((out / "validation.json").read_text())["sarq_acrq"]
    assert figures["n_retrieval_pairs"] == len(small_prepared.relevant("train")) + figures["n_lent_pairs"]
    assert 0 < figures["n_lent_pairs"] <= small_prepared.items["item_id"].nunique()      # per_item 1
    assert metadata["sarq_acrq_n_lent_pairs"] == figures["n_lent_pairs"]


def test_retriever_returns_k_distinct_known_items(stage_output, stage_inputs, small_prepared):
    out, _ = stage_output
    retriever = load_retriever(out, stage_inputs["semantic_ids"], stage_inputs["prepared_dataset"],
                               variant="sarq_acrq")
    found = retriever.search(["brass rug", "heavy duty ladder", "copper hammer"], 7)
    known = set(small_prepared.items["item_id"])
    assert len(found) == 3
    for hits in found:
        ids = [item for item, _ in hits]
        assert len(ids) == 7 and len(set(ids)) == 7 and set(ids) <= known
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
    tiger = load_retriever(out / "tiger", stage_inputs["semantic_ids"], stage_inputs["prepared_dataset"],
                           variant="tiger")
    assert tiger.model.config.dec_vocab_size != retriever.model.config.dec_vocab_size or tiger.trie.sids != retriever.trie.sids


def test_items_sharing_a_sid_are_ordered_by_sci_score(stage_output, stage_inputs):
    out, _ = stage_output
    base = load_retriever(out, stage_inputs["semantic_ids"], stage_inputs["prepared_dataset"])
    shared = next(index for index in range(len(base.trie.sids))
                  if base.buckets.ptr[index + 1] - base.buckets.ptr[index] >= 3)
    rows = base.buckets.rows[base.buckets.ptr[shared]:base.buckets.ptr[shared + 1]]
    query_vector = base.item_vectors[rows[-1]]        # the bucket's last item is the query's nearest
    retriever = GenerativeRetriever(base.model, base.reader, base.trie, base.buckets, base.item_ids,
                                    base.item_vectors, lambda texts: np.stack([query_vector] * len(texts)),
                                    beam_size=len(base.trie.sids), length_penalty=0.0, batch_size=4)
    hits = retriever.search(["anything"], len(base.item_ids))[0]
    position = {item: rank for rank, (item, _) in enumerate(hits)}
    bucket = [base.item_ids[row] for row in rows]
    order = sorted(bucket, key=position.get)
    expected = [base.item_ids[row] for row in rows[np.argsort(-(base.item_vectors[rows] @ query_vector), kind="stable")]]
    assert order == expected and order[0] == base.item_ids[rows[-1]]


@pytest.mark.parametrize("pool", [1, 2, 3])
def test_bucket_pool_orders_the_items_of_each_group_of_top_sids_by_sci_score(stage_output, stage_inputs, pool):
    out, _ = stage_output
    base = load_retriever(out, stage_inputs["semantic_ids"], stage_inputs["prepared_dataset"])
    rng = np.random.default_rng(pool)
    query_vector = rng.normal(size=base.item_vectors.shape[1]).astype(np.float32)
    retriever = GenerativeRetriever(base.model, base.reader, base.trie, base.buckets, base.item_ids,
                                    base.item_vectors, lambda texts: np.stack([query_vector] * len(texts)),
                                    beam_size=4, length_penalty=0.0, batch_size=4, bucket_pool=pool)
    beam = [2, 0, 1, 3]                                           # SID indices in beam order, then an empty slot
    sids, scores = np.array([beam + [-1]]), np.array([[-0.1, -0.5, -0.9, -1.3, -np.inf]])
    hits = retriever.resolve(["anything"], sids, scores, len(base.item_ids))[0]
    expected = []
    for start in range(0, len(beam), pool):
        rows = np.concatenate([base.buckets.rows[base.buckets.ptr[sid]:base.buckets.ptr[sid + 1]]
                               for sid in beam[start:start + pool]])
        rows = rows[np.argsort(-(base.item_vectors[rows] @ query_vector), kind="stable")]
        expected += [(str(base.item_ids[row]), float(scores[0, start])) for row in rows]
    assert hits == expected
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)


def test_a_minilm_encoder_model_trains_in_the_stage_and_serves_from_raw_text(small_params, stage_inputs,
                                                                             small_prepared, tmp_path):
    params = deep_merge(small_params, {
        "generative": {"preset": "cpu", "device": "cpu", "encoder": "minilm", "minilm_tuned_layers": 1,
                       "presets": {"cpu": {"model": TINY_MODEL, "sft": {"steps": 12, "batch_size": 32}}}},
        "sft": {"warmup_steps": 4, "checkpoint_every": 12, "log_every": 6, "lr": 0.005, "valid_max_queries": 24,
                "baselines": {"tiger": None}},
        "decode": {"beam_size": 5, "batch_size": 16},
        "text": {"cache_dir": str(tmp_path / "cache")},
    })
    metadata = run(params, stage_inputs, tmp_path / "out")
    assert metadata["sarq_acrq_valid_sid_rate"] == 1.0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["encoder"] == "minilm" and config["tuned_layers"] == 1
    # the frozen layers' states of every SFT source were cached once
    assert list((tmp_path / "cache").glob("*.statekeys.npy"))
    retriever = load_retriever(tmp_path / "out", stage_inputs["semantic_ids"], stage_inputs["prepared_dataset"])
    found = retriever.search(["brass rug", "heavy duty ladder"], 5)
    known = set(small_prepared.items["item_id"])
    assert [len({item for item, _ in hits} & known) for hits in found] == [5, 5]


def test_indexing_views_can_read_their_own_query_vectors_through_the_query_tower(small_params, stage_inputs,
                                                                                  small_prepared, tmp_path):
    params = deep_merge(small_params, {
        "generative": {"preset": "cpu", "device": "cpu", "init_from_minilm": False,
                       "presets": {"cpu": {"model": TINY_MODEL, "sft": {"steps": 12, "batch_size": 32}}}},
        "sft": {"warmup_steps": 4, "checkpoint_every": 12, "log_every": 6, "lr": 0.005, "valid_max_queries": 24,
                "baselines": {"tiger": None}, "indexing_query_vector": "view"},
        "decode": {"beam_size": 5, "batch_size": 16},
        "text": {"cache_dir": str(tmp_path / "cache")},
    })
    metadata = run(params, stage_inputs, tmp_path / "out")
    assert metadata["sarq_acrq_valid_sid_rate"] == 1.0
    # the views' MiniLM sentence vectors were computed once and cached by content hash
    assert list((tmp_path / "cache").glob("*.keys.npy"))
    with pytest.raises(ValueError, match="indexing_query_vector must be one of"):
        run(deep_merge(params, {"sft": {"indexing_query_vector": "titles"}}), stage_inputs, tmp_path / "bad")
