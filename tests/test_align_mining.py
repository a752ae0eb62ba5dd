"""Preference mining: roles, exclusions, sizes and determinism."""
from __future__ import annotations

import pandas as pd
import pytest

from sid_models.align.mining import (MINED_SPLIT, VIEW_PREFIX, mine_preferences, mine_view_preferences,
                                     preference_query_ids, preference_summary, selection_dataset, view_queries)
from sid_models.generative.stage import validation_queries
from sid_models.text.views import ViewConfig, query_like_views

MINING = {"queries": "train", "valid_mining_share": 0.5, "max_positives": 3, "max_judged_negatives": 2,
          "max_pseudo_negatives": 4, "positive_weight": "best_item", "pseudo_negatives": "beam_top", "beam_size": 10,
          "pool_beam_size": 10}


def item_sids(prepared, levels=3, codes=8):
    """Deterministic SIDs from item row numbers; every fourth pair of items shares a SID (a bucket)."""
    sids = {}
    for row, item_id in enumerate(prepared.items["item_id"]):
        key = row // 2 if row % 4 < 2 else row
        sids[item_id] = tuple((key // codes ** level) % codes for level in range(levels))
    return sids


def beam_for(prepared, sids, width=10):
    """A beam that mixes relevant SIDs with arbitrary catalogue SIDs, as an SFT model's would."""
    all_sids = sorted(set(sids.values()))
    relevant = prepared.relevant("train").groupby("query_id")["item_id"].apply(list)
    beam = {}
    for index, query_id in enumerate(prepared.split_queries("train")["query_id"]):
        hits = [sids[item] for item in relevant.get(query_id, [])[:2]]
        beam[query_id] = hits + [all_sids[(index * 7 + k) % len(all_sids)] for k in range(width - len(hits))]
    return beam


@pytest.fixture(scope="module")
def mined(small_prepared):
    sids = item_sids(small_prepared)
    return sids, beam_for(small_prepared, sids), mine_preferences(small_prepared, sids, beam_for(small_prepared, sids),
                                                                  MINING, seed=3)


def test_positives_are_relevant_sids_graded_and_negatives_never_positive(small_prepared, mined):
    sids, _, preferences = mined
    judged = small_prepared.split_judgments("train")
    assert set(preferences["query_id"]) <= set(small_prepared.split_queries("train")["query_id"])
    for query_id, group in preferences.groupby("query_id"):
        rows = judged[judged["query_id"] == query_id]
        relevant_sids = {sids[i] for i in rows.loc[rows["relevant"], "item_id"]}
        judged_sids = {sids[i] for i in rows["item_id"]}
        positives = {tuple(s) for s in group.loc[group["role"] == "positive", "sid"]}
        negatives = [tuple(s) for s in group.loc[group["role"] != "positive", "sid"]]
        assert positives and positives <= relevant_sids
        assert not set(negatives) & relevant_sids
        assert len(negatives) == len(set(negatives))
        pseudo = {tuple(s) for s in group.loc[group["role"] == "pseudo_negative", "sid"]}
        assert not pseudo & judged_sids
        weights = group.loc[group["role"] == "positive", "weight"]
        assert ((weights > 0) & (weights <= 1)).all() and weights.is_monotonic_decreasing


def test_sizes_follow_params(mined):
    _, _, preferences = mined
    counts = preferences.groupby(["query_id", "role"]).size().unstack(fill_value=0)
    assert counts["positive"].max() <= 3 and counts["judged_negative"].max() <= 2
    assert counts["pseudo_negative"].max() == 4
    summary = preference_summary(preferences)
    assert summary["n_multi_positive_queries"] > 0 and summary["mean_pseudo_negatives"] > 0


def test_pseudo_negatives_follow_beam_order(mined):
    _, beam, preferences = mined
    for query_id, group in list(preferences[preferences["role"] == "pseudo_negative"].groupby("query_id"))[:50]:
        positions = [beam[query_id].index(tuple(s)) for s in group.sort_values("rank")["sid"]]
        assert positions == sorted(positions)


def test_mining_is_deterministic_under_a_seed_and_independent_of_query_order(small_prepared, mined):
    sids, beam, preferences = mined
    again = mine_preferences(small_prepared, sids, dict(reversed(list(beam.items()))), MINING, seed=3)
    pd.testing.assert_frame_equal(preferences, again)
    other = mine_preferences(small_prepared, sids, beam, MINING, seed=4)
    assert not other.equals(preferences)


def test_missing_sid_for_a_judged_item_is_an_error(small_prepared, mined):
    sids, beam, _ = mined
    item = small_prepared.split_judgments("train")["item_id"].iloc[0]
    with pytest.raises(ValueError, match="no SID"):
        mine_preferences(small_prepared, {k: v for k, v in sids.items() if k != item}, beam, MINING, seed=0)


def test_bucket_gain_weighs_a_bucket_by_all_of_its_relevant_items(small_prepared, mined):
    sids, beam, best = mined
    summed = mine_preferences(small_prepared, sids, beam, {**MINING, "positive_weight": "bucket_gain"}, seed=3)
    judged = small_prepared.split_judgments("train")
    scale = small_prepared.scale
    top = scale.gain(scale.maximum)
    checked_shared = 0
    for (query_id, role), group in summed.groupby(["query_id", "role"]):
        if role != "positive":
            continue
        rows = judged[(judged["query_id"] == query_id) & (judged["relevance"] >= scale.threshold)]
        for sid, weight in zip(group["sid"], group["weight"]):
            members = rows[[sids[item] == tuple(sid) for item in rows["item_id"]]]
            assert weight == pytest.approx(sum(scale.gain(g) for g in members["relevance"]) / top)
            checked_shared += len(members) > 1
    assert checked_shared > 0, "the fixture has no bucket holding two relevant items of one query"
    assert preference_summary(summed)["n_multi_item_positives"] == checked_shared
    assert preference_summary(best)["n_multi_item_positives"] == 0


def test_pool_edge_takes_half_the_beam_top_and_half_the_pool_edge(small_prepared, mined):
    sids, beam, _ = mined
    edge = mine_preferences(small_prepared, sids, beam, {**MINING, "pseudo_negatives": "pool_edge"}, seed=3)
    judged = small_prepared.split_judgments("train")
    for query_id, group in edge[edge["role"] == "pseudo_negative"].groupby("query_id"):
        judged_sids = {sids[item] for item in judged.loc[judged["query_id"] == query_id, "item_id"]}
        unjudged = [sid for sid in dict.fromkeys(beam[query_id]) if sid not in judged_sids]
        picked = [tuple(sid) for sid in group.sort_values("rank")["sid"]]
        expected = unjudged if len(unjudged) <= 4 else unjudged[:2] + unjudged[-2:]
        assert picked == expected
        assert list(group.sort_values("rank")["beam_rank"]) == [beam[query_id].index(sid) for sid in picked]


def test_unknown_mining_modes_are_refused(small_prepared, mined):
    sids, beam, _ = mined
    with pytest.raises(ValueError, match="pseudo_negatives"):
        mine_preferences(small_prepared, sids, beam, {**MINING, "pseudo_negatives": "random"}, seed=0)
    with pytest.raises(ValueError, match="positive_weight"):
        mine_preferences(small_prepared, sids, beam, {**MINING, "positive_weight": "mean"}, seed=0)


VIEWS = ViewConfig(views=3, min_words=2, max_words=4, typo_rate=0.3)


def test_view_queries_come_from_unreached_items_one_view_each_and_follow_the_seed(small_prepared):
    views = view_queries(small_prepared, {**MINING, "view_items": 12}, VIEWS, seed=5)
    reached = set(small_prepared.relevant("train")["item_id"].astype(str))
    assert len(views) == 12 and views["item_id"].is_unique
    assert not set(views["item_id"]) & reached
    assert (views["query_id"] == VIEW_PREFIX + views["item_id"]).all()
    titles = small_prepared.items["title"].astype(str).tolist()
    per_item = query_like_views(titles, VIEWS, 5)
    for row, item_id, text in zip(views["item_row"], views["item_id"], views["text"]):
        assert small_prepared.items["item_id"].astype(str).iloc[row] == item_id and text in per_item[row]
    pd.testing.assert_frame_equal(views, view_queries(small_prepared, {**MINING, "view_items": 12}, VIEWS, seed=5))
    assert set(view_queries(small_prepared, {**MINING, "view_items": 12}, VIEWS, seed=6)["item_id"]) != set(
        views["item_id"])
    assert view_queries(small_prepared, {**MINING, "view_items": 0}, VIEWS, seed=5).empty


def test_view_queries_refuse_bad_settings(small_prepared):
    with pytest.raises(ValueError, match="view_items must be >= 0"):
        view_queries(small_prepared, {**MINING, "view_items": -1}, VIEWS, seed=0)
    with pytest.raises(ValueError, match="indexing_views.views >= 1"):
        view_queries(small_prepared, {**MINING, "view_items": 3}, ViewConfig(0, 2, 4, 0.0), seed=0)


def test_a_view_query_prefers_its_own_sid_to_the_rest_of_its_beam(small_prepared, mined):
    sids = mined[0]
    views = view_queries(small_prepared, {**MINING, "view_items": 6}, VIEWS, seed=1)
    all_sids = sorted(set(sids.values()))
    beam = {query_id: all_sids[index:index + 5] + [sids[item_id]] + all_sids[index + 5:index + 9]
            for index, (query_id, item_id) in enumerate(zip(views["query_id"], views["item_id"]))}
    rows = mine_view_preferences(views, sids, beam, {**MINING, "view_negatives": True})
    for query_id, item_id in zip(views["query_id"], views["item_id"]):
        own = rows[rows["query_id"] == query_id]
        positive = own[own["role"] == "positive"]
        assert len(positive) == 1 and tuple(positive["sid"].iloc[0]) == sids[item_id]
        assert positive["beam_rank"].iloc[0] == 5 and positive["weight"].iloc[0] == 1.0
        negatives = own[own["role"] == "pseudo_negative"]
        assert len(negatives) == MINING["max_pseudo_negatives"]
        assert sids[item_id] not in {tuple(sid) for sid in negatives["sid"]}
        assert negatives["beam_rank"].tolist() == [0, 1, 2, 3]
    replay = mine_view_preferences(views, sids, beam, {**MINING, "view_negatives": False})
    assert set(replay["role"]) == {"positive"} and len(replay) == len(views)
    summary = preference_summary(pd.concat([mined[2], rows], ignore_index=True))
    assert summary["n_view_queries"] == len(views)
    assert summary["n_preference_queries"] == mined[2]["query_id"].nunique() + len(views)


def test_valid_mining_takes_a_seeded_share_of_validation_queries_and_selection_keeps_the_rest(small_prepared):
    mining = {**MINING, "queries": "valid", "valid_mining_share": 0.5}
    judged = set(small_prepared.relevant("valid")["query_id"].astype(str))
    mined = preference_query_ids(small_prepared, mining, seed=0)
    assert set(mined) <= judged and len(mined) == round(0.5 * len(judged))
    assert mined == preference_query_ids(small_prepared, mining, seed=0)
    assert mined != preference_query_ids(small_prepared, mining, seed=1)
    assert not set(mined) & set(small_prepared.split_queries("train")["query_id"])

    selection = selection_dataset(small_prepared, mining, seed=0)
    selected = set(validation_queries(selection, 10_000)["query_id"].astype(str))
    assert selected == judged - set(mined)                   # validation figures never read a mined query
    assert set(selection.split_queries(MINED_SPLIT)["query_id"].astype(str)) == set(mined)
    assert selection.split_queries("train").equals(small_prepared.split_queries("train"))
    assert selection_dataset(small_prepared, MINING, seed=0) is small_prepared

    sids = item_sids(small_prepared)
    valid_beams = {query: [sids[item] for item in small_prepared.items["item_id"][:10]] for query in mined}
    preferences = mine_preferences(small_prepared, sids, valid_beams, mining, seed=0)
    assert set(preferences["query_id"]) == set(mined)


@pytest.mark.parametrize("change, message", [({"queries": "test"}, "queries"),
                                             ({"queries": "valid", "valid_mining_share": 1.0}, "valid_mining_share")])
def test_preference_queries_reject_a_bad_source(small_prepared, change, message):
    with pytest.raises(ValueError, match=message):
        preference_query_ids(small_prepared, {**MINING, **change}, seed=0)
