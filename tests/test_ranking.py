"""Learned ranking: candidates from the channels, their features, labels, LightGBM, the ranker stage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sid_models.data.schema import RelevanceScale
from sid_models.params import deep_merge
from sid_models.ranking.features import FEATURES, CandidateSettings, QueryCandidates, bigrams, prefixes, trigrams
from sid_models.ranking.ranker import (MAX_QUERY_ROWS, RankerConfig, labels, load_ranker, save_ranker,
                                      train_ranker, training_rows)
from sid_models.ranking.stage import load_featurizer, load_ranked_searcher, run
from test_generative_stage import stage_inputs, stage_output  # noqa: F401  (module fixtures)

COLUMN = {name: index for index, name in enumerate(FEATURES)}
CONFIG = RankerConfig(num_leaves=7, learning_rate=0.2, min_data_in_leaf=5, feature_fraction=1.0, max_rounds=60,
                      early_stopping_rounds=10, folds=3, label_steps=2, threads=1)


@pytest.fixture(scope="module")
def ranker_inputs(stage_inputs, stage_output, small_stage_folders):  # noqa: F811
    return {**stage_inputs, "text_embeddings": small_stage_folders["text_embeddings"],
            "sft_checkpoint": stage_output[0]}


@pytest.fixture(scope="module")
def ranker_params(small_params):
    return deep_merge(small_params, {"ranker": {
        "systems": {"pool": {"channels": ["pool"], "pool_sids": 3, "bm25_depth": 10, "dense_depth": 10,
                             "history_depth": 5},
                    "hybrid": {"channels": ["pool", "bm25", "dense", "history"], "pool_sids": 3, "bm25_depth": 10,
                               "dense_depth": 10, "history_depth": 5}},
        "lightgbm": {"num_leaves": 7, "learning_rate": 0.2, "min_data_in_leaf": 5, "feature_fraction": 1.0,
                     "max_rounds": 40, "early_stopping_rounds": 10, "folds": 3, "label_steps": 2, "threads": 1}}})


def test_trigrams_survive_a_misspelling():
    right, wrong, other = trigrams("cordless drill"), trigrams("cordles dril"), trigrams("kitchen faucet")
    assert len(right & wrong) / len(right | wrong) > 0.4 > len(right & other) / len(right | other)


def test_word_prefixes_meet_where_a_misspelt_ending_parts_the_words():
    assert prefixes(["cordles", "dril"]) == prefixes(["cordless", "drill"]) == {"cord", "dril"}
    assert bigrams(["cordless", "drill", "kit"]) == {"cordless drill", "drill kit"} and bigrams(["drill"]) == set()


def test_candidates_are_the_union_of_the_channels_with_their_features(ranker_params, ranker_inputs):
    featurizer = load_featurizer(ranker_params, ranker_inputs)
    query = featurizer.titles[5]
    pool_only = CandidateSettings(("pool",), pool_sids=3, bm25_depth=10, dense_depth=10, history_depth=5)
    union = CandidateSettings(("pool", "bm25", "dense"), pool_sids=3, bm25_depth=10, dense_depth=10, history_depth=5)
    (pooled,), (merged,) = featurizer.candidates([query], pool_only), featurizer.candidates([query], union)

    sids, _ = featurizer.retriever.search_sids([query], featurizer.retriever.beam_size)
    buckets = featurizer.retriever.buckets
    expected_pool = np.unique(np.concatenate([buckets.rows[buckets.ptr[sid]:buckets.ptr[sid + 1]]
                                              for sid in sids[0][sids[0] >= 0][:3]]))
    assert pooled.rows.tolist() == expected_pool.tolist()
    assert not np.isnan(pooled.features[:, COLUMN["beam_rank"]]).any()
    assert set(pooled.rows) < set(merged.rows)

    bm25 = featurizer.bm25.scores([query])[0]
    assert np.allclose(merged.features[:, COLUMN["bm25_score"]], bm25[merged.rows], atol=1e-5)
    assert 5 in merged.rows.tolist()                                 # the title itself is BM25's best match
    own = merged.features[merged.rows.tolist().index(5)]
    assert own[COLUMN["bm25_rank"]] == 0 and own[COLUMN["query_terms_in_title"]] == 1.0
    assert own[COLUMN["trigram_jaccard"]] == 1.0
    assert own[COLUMN["prefix_terms_in_title"]] == 1.0 and own[COLUMN["bigrams_in_title"]] == 1.0
    assert np.isnan(own[COLUMN["numbers_in_title"]]) or own[COLUMN["numbers_in_title"]] == 1.0
    gaps = merged.features[:, COLUMN["minilm_gap"]]
    assert gaps.min() == 0.0 and np.allclose(gaps, merged.features[:, COLUMN["minilm_cosine"]].max()
                                             - merged.features[:, COLUMN["minilm_cosine"]])
    sci = featurizer.retriever.item_vectors @ featurizer.query_tower([query], featurizer.encode_minilm([query]))[0]
    dense_top = np.argsort(-sci)[:10]
    assert set(dense_top.tolist()) <= set(merged.rows.tolist())
    ranks = merged.features[np.searchsorted(merged.rows, dense_top), COLUMN["sci_rank"]]
    assert ranks.tolist() == list(range(10))


def test_query_history_scores_warm_items_by_their_training_queries():
    from sid_models.ranking.features import QueryHistory

    bm25_params = {"k1": 1.2, "b": 0.75, "method": "lucene", "stopwords": "en", "stemmer": "english"}
    vectors = np.eye(4, dtype=np.float32)[[0, 1, 2]]
    # items 0 and 2 are warm (item 2 twice), items 1 and 3 were reached by no training query
    history = QueryHistory(np.array([2, 0, 2]), ["garden hoses", "cordless drill", "patio heater"], vectors, 4,
                           bm25_params)
    scores = history.bm25_scores(["drill", "heater"])
    assert np.isnan(scores[:, [1, 3]]).all()
    assert scores[0, 0] > 0 == scores[0, 2] and scores[1, 2] > 0 == scores[1, 0]
    cosine = history.cosine(np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32))  # the "patio heater" vector
    assert cosine[2] == 1.0 and cosine[0] == 0.0 and np.isnan(cosine[[1, 3]]).all()
    with pytest.raises(ValueError, match="outside the catalogue of 4 items"):
        QueryHistory(np.array([4]), ["x"], vectors[:1], 4, bm25_params)


def test_history_channel_brings_the_items_of_the_nearest_training_queries(ranker_params, ranker_inputs,
                                                                           small_prepared):
    featurizer = load_featurizer(ranker_params, ranker_inputs)
    train = small_prepared.relevant("train").merge(small_prepared.queries, on="query_id")
    query, item = train.iloc[0]["text"], train.iloc[0]["item_id"]
    settings = CandidateSettings(("history",), pool_sids=3, bm25_depth=10, dense_depth=10, history_depth=5)
    (found,) = featurizer.candidates([str(query)], settings)
    row = featurizer.retriever.item_ids.tolist().index(item)
    assert row in found.rows.tolist()                  # a training query finds its own relevant item
    own = found.features[found.rows.tolist().index(row)]
    assert own[COLUMN["history_cosine"]] == pytest.approx(1.0, abs=1e-4) and own[COLUMN["history_bm25"]] > 0
    assert 0 < own[COLUMN["history_ratio"]] <= 1.0

    # the neighbour features are the history's maxima over the item's SID and first-level cell
    cosine = featurizer.history.cosine(featurizer.encode_minilm([str(query)])[0])
    history_bm25 = featurizer.history.bm25_scores([str(query)])[0]
    for position, candidate in enumerate(found.rows):
        same_sid = featurizer.sid_of_row == featurizer.sid_of_row[candidate]
        same_cell = featurizer.cell_of_row == featurizer.cell_of_row[candidate]
        got = found.features[position]
        np.testing.assert_allclose(got[COLUMN["bucket_history_cosine"]], np.nanmax(cosine[same_sid]), rtol=1e-5)
        np.testing.assert_allclose(got[COLUMN["bucket_history_bm25"]], np.nanmax(history_bm25[same_sid]), rtol=1e-5)
        np.testing.assert_allclose(got[COLUMN["cell_history_cosine"]], np.nanmax(cosine[same_cell]), rtol=1e-5)
    cold = np.flatnonzero(np.isnan(cosine))
    alone = [row for row in cold if np.isnan(cosine[featurizer.sid_of_row == featurizer.sid_of_row[row]]).all()]
    if alone:                                          # a SID with no warm item lends nothing
        (found_alone,) = featurizer.candidates([str(query)], CandidateSettings(("dense",), 3, 10, len(cosine), 5))
        assert np.isnan(found_alone.features[found_alone.rows.tolist().index(alone[0]),
                                             COLUMN["bucket_history_cosine"]])


def test_labels_are_quantised_gains_and_unjudged_items_are_zero():
    import pandas as pd

    scale = RelevanceScale(minimum=1, maximum=3, threshold=2.5, gain_offset=1)
    judgments = pd.DataFrame({"query_id": ["q", "q"], "item_id": ["a", "b"], "relevance": [3.0, 2.0]})
    found = QueryCandidates(rows=np.array([0, 1, 2]), features=np.zeros((3, len(FEATURES)), dtype=np.float32))
    (label,) = labels([found], ["q"], np.array(["a", "b", "c"]), judgments, scale, label_steps=2)
    assert label.tolist() == [4, 2, 0]


def test_ranker_learns_which_feature_carries_relevance(tmp_path):
    rng = np.random.default_rng(0)
    candidates, query_labels = [], []
    for _ in range(60):
        features = rng.normal(size=(20, len(FEATURES))).astype(np.float32)
        label = (features[:, COLUMN["sci_score"]] > 1.0).astype(np.int32) * 2
        label[0] = 2
        features[0, COLUMN["sci_score"]] = 3.0
        candidates.append(QueryCandidates(rows=np.arange(20), features=features))
        query_labels.append(label)
    booster, summary, out_of_fold = train_ranker(candidates, query_labels, CONFIG, seed=0)
    assert summary["cv_ndcg@10"] > 0.9 and summary["rounds"] >= 1 and summary["train_queries"] == 60
    # every query is ranked by the fold model that did not train on it, and well
    assert [len(scores) for scores in out_of_fold] == [20] * 60
    assert np.mean([label[np.argmax(scores)] > 0 for scores, label in zip(out_of_fold, query_labels)]) > 0.95
    test = rng.normal(size=(50, len(FEATURES))).astype(np.float32)
    test[:, COLUMN["sci_score"]] = np.linspace(-2, 2, 50)
    scores = booster.predict(test)
    assert scores[-5:].mean() > scores[:5].mean()

    settings = CandidateSettings(("pool",), 3, 10, 10, 5)
    save_ranker(tmp_path, booster, settings, summary)
    loaded, loaded_settings = load_ranker(tmp_path)
    assert loaded_settings == settings and np.allclose(loaded.predict(test), scores)
    saved = json.loads((tmp_path / "ranker.json").read_text())
    (tmp_path / "ranker.json").write_text(json.dumps({**saved, "features": saved["features"][:-1]}))
    with pytest.raises(ValueError, match="retrain the ranker stage"):
        load_ranker(tmp_path)


def test_a_query_past_lightgbms_row_limit_trains_on_its_labelled_and_best_scored_candidates():
    rng = np.random.default_rng(0)
    n = MAX_QUERY_ROWS + 500
    features = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    label = np.zeros(n, dtype=np.int32)
    label[[3, n - 1]] = 2
    features[[3, n - 1], COLUMN["sci_score"]] = -9.0      # labelled but scored last: still kept
    features[7, COLUMN["sci_score"]] = np.nan
    rows = training_rows(features, label)
    assert len(rows) == MAX_QUERY_ROWS and {3, n - 1} <= set(rows.tolist()) and 7 not in rows
    unlabelled = np.setdiff1d(np.arange(n), [3, n - 1])
    dropped = np.setdiff1d(unlabelled, rows)
    assert np.nanmax(features[dropped, COLUMN["sci_score"]]) <= np.nanmin(
        features[np.setdiff1d(rows, [3, n - 1]), COLUMN["sci_score"]])
    np.testing.assert_array_equal(training_rows(features[:50], label[:50]), np.arange(50))
    # such a query trains the ranker (LightGBM would refuse it whole) and is scored whole
    others = [QueryCandidates(rows=np.arange(20), features=features[:20]) for _ in range(8)]
    other_labels = [np.r_[2, np.zeros(19, dtype=np.int32)]] * 8
    big = QueryCandidates(rows=np.arange(n), features=features)
    _, summary, out_of_fold = train_ranker([big, *others], [label, *other_labels], CONFIG, seed=0)
    assert len(out_of_fold[0]) == n and summary["train_queries"] == 9


def test_training_needs_a_relevant_candidate_in_every_fold():
    empty = [QueryCandidates(rows=np.arange(3), features=np.zeros((3, len(FEATURES)), dtype=np.float32))] * 5
    with pytest.raises(ValueError, match="at least 3 validation queries with a relevant candidate"):
        train_ranker(empty, [np.zeros(3, dtype=np.int32)] * 5, CONFIG, seed=0)


def test_ranker_stage_trains_both_systems_and_they_search(ranker_params, ranker_inputs, tmp_path, small_prepared):
    metadata = run(ranker_params, ranker_inputs, tmp_path)
    summary = json.loads((tmp_path / "ranker.json").read_text())
    assert set(summary) == {"pool", "hybrid"}
    assert summary["hybrid"]["valid_coverage"] >= summary["pool"]["valid_coverage"] > 0
    assert metadata["pool.rounds"] >= 1
    searcher = load_ranked_searcher(ranker_params, {**ranker_inputs, "ranker": tmp_path}, "hybrid")
    found = searcher.search(["brass rug", "heavy duty ladder"], 5)
    known = set(small_prepared.items["item_id"])
    for hits in found:
        assert len(hits) == 5 and len({item for item, _ in hits}) == 5 and {item for item, _ in hits} <= known
        assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)


def test_logged_ranked_retriever_answers_like_the_ranker(ranker_params, ranker_inputs, tmp_path):
    import mlflow
    import pandas as pd

    from sid_models.serving.pyfunc import log_retriever

    run(ranker_params, ranker_inputs, tmp_path / "ranker")
    expected = load_ranked_searcher(ranker_params, {**ranker_inputs, "ranker": tmp_path / "ranker"}, "pool").search(
        ["brass rug", "heavy duty ladder"], 4)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("ranked", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_retriever(ranker_params, ranker_inputs["sft_checkpoint"], ranker_inputs["semantic_ids"],
                                 ranker_inputs["prepared_dataset"],
                                 ranker=tmp_path / "ranker" / "pool", text_embeddings=ranker_inputs["text_embeddings"])
        found = mlflow.pyfunc.load_model(info.model_uri).predict(
            pd.DataFrame({"query": ["brass rug", "heavy duty ladder"]}), params={"k": 4})
    finally:
        mlflow.set_tracking_uri(previous)
    assert found["item_ids"].map(list).tolist() == [[item for item, _ in hits] for hits in expected]
    assert all(np.allclose(list(scores), [score for _, score in hits])
               for scores, hits in zip(found["scores"], expected))
