"""Query splits, popularity segments, segment statistics and the Great Expectations suites."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from sid_models.data.demo import DEMO_SCALE
from sid_models.data.expectations import split_suites, table_suites
from sid_models.data.schema import SEGMENTS, SPLITS, Dataset
from sid_models.data.split import assign_splits, item_segments, prepare, split_key
from sid_models.data.stats import exposure_histogram, recount_exposure, segment_statistics

IDS = pd.Series([f"q{index}" for index in range(20000)])


def test_splits_are_deterministic_and_change_with_the_salt():
    first = assign_splits(IDS, "salt-a", 0.1, 0.1)
    assert first.equals(assign_splits(IDS, "salt-a", 0.1, 0.1))
    other = assign_splits(IDS, "salt-b", 0.1, 0.1)
    assert 0.25 < (first != other).mean() < 0.4  # independent draws disagree on ~1 - (0.8² + 2·0.1²) = 34 %


def test_split_of_a_query_does_not_depend_on_the_other_queries():
    full = assign_splits(IDS, "salt", 0.1, 0.1)
    subset = assign_splits(IDS.iloc[::7], "salt", 0.1, 0.1)
    assert subset.equals(full.iloc[::7])


@pytest.mark.parametrize("valid, test", [(0.1, 0.1), (0.05, 0.3), (0.0, 0.2)])
def test_split_fractions_are_respected(valid, test):
    shares = assign_splits(IDS, "salt", valid, test).value_counts(normalize=True)
    assert shares.get("valid", 0.0) == pytest.approx(valid, abs=0.01)
    assert shares.get("test", 0.0) == pytest.approx(test, abs=0.01)


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="sum below 1"):
        assign_splits(IDS, "salt", 0.6, 0.5)


def test_no_query_is_in_two_splits(small_prepared):
    query_split = small_prepared.queries.set_index("query_id")["split"]
    assert (small_prepared.judgments["split"] == small_prepared.judgments["query_id"].map(query_split)).all()
    texts = pd.DataFrame({"key": split_key(small_prepared.queries["text"]), "split": small_prepared.queries["split"]})
    assert texts.drop_duplicates().groupby("key").size().max() == 1
    assert set(small_prepared.queries["split"]) == set(SPLITS)


def test_queries_with_the_same_text_share_a_split():
    texts = pd.Series([f"Drill {index % 50}" if index % 2 else f"drill  {index % 50} " for index in range(400)])
    dataset = Dataset(name="t", items=pd.DataFrame({"item_id": ["a"], "title": ["drill"]}),
                      queries=pd.DataFrame({"query_id": [str(index) for index in range(400)], "text": texts}),
                      judgments=pd.DataFrame({"query_id": ["0"], "item_id": ["a"], "relevance": [3.0]}),
                      scale=DEMO_SCALE)
    prepared = prepare(dataset, {"salt": "s", "valid_fraction": 0.2, "test_fraction": 0.2},
                       {"head_min_exposure": 3, "torso_min_exposure": 2})
    assert prepared.queries.groupby(split_key(prepared.queries["text"]))["split"].nunique().max() == 1


def test_segments_follow_the_exposure_thresholds():
    items = pd.DataFrame({"item_id": list("abcdef")})
    train_relevant = pd.DataFrame({"item_id": list("aaaabbbccd")})
    segments = item_segments(items, train_relevant, head_min_exposure=3, torso_min_exposure=2)
    assert segments["exposure"].tolist() == [4, 3, 2, 1, 0, 0]
    assert segments["segment"].tolist() == ["head", "head", "torso", "tail", "cold", "cold"]
    with pytest.raises(ValueError):
        item_segments(items, train_relevant, head_min_exposure=2, torso_min_exposure=3)


def _query_in(split: str, split_params: dict) -> str:
    """A new query text that the salted hash sends to `split`."""
    for index in range(10000):
        text = f"probe query {index}"
        if assign_splits(split_key(pd.Series([text])), split_params["salt"], split_params["valid_fraction"],
                         split_params["test_fraction"]).iloc[0] == split:
            return text
    raise AssertionError(f"no probe text hashes to {split}")


@pytest.mark.parametrize("split, raises_exposure", [("test", False), ("valid", False), ("train", True)])
def test_popularity_counts_training_judgments_only(small_params, small_prepared, split, raises_exposure):
    item = small_prepared.segments.sort_values("exposure").iloc[-1]
    text = _query_in(split, small_params["split"])
    columns = ["query_id", "item_id", "relevance"]
    dataset = Dataset(
        name="probe", items=small_prepared.items, scale=small_prepared.scale,
        queries=pd.concat([small_prepared.queries[["query_id", "text"]],
                           pd.DataFrame({"query_id": ["probe"], "text": [text]})], ignore_index=True),
        judgments=pd.concat([small_prepared.judgments[columns],
                             pd.DataFrame({"query_id": ["probe"], "item_id": [item["item_id"]],
                                           "relevance": [small_prepared.scale.maximum]})], ignore_index=True))
    prepared = prepare(dataset, small_params["split"], small_params["segments"])
    exposure = prepared.segments.set_index("item_id").loc[item["item_id"], "exposure"]
    assert exposure == item["exposure"] + int(raises_exposure)
    assert (recount_exposure(prepared).to_numpy() == prepared.segments["exposure"].to_numpy()).all()


def test_segment_statistics_add_up(small_prepared):
    stats = segment_statistics(small_prepared)
    assert sum(stats[f"n_items_{segment}"] for segment in SEGMENTS) == len(small_prepared.items)
    assert sum(stats["exposure_histogram"].values()) == len(small_prepared.items)
    assert stats["share_relevant_train_cold"] == 0.0
    for split in ("valid", "test"):
        shares = sum(stats[f"share_relevant_{split}_{segment}"] for segment in SEGMENTS)
        assert shares == pytest.approx(1.0, abs=1e-5)
        assert stats[f"share_relevant_{split}_seen"] == pytest.approx(1 - stats[f"share_relevant_{split}_cold"])
    assert stats["share_relevant_test_cold"] > 0


def test_exposure_histogram_bins():
    histogram = exposure_histogram(np.array([0, 0, 1, 4, 5, 9, 10, 49, 50, 300]))
    assert histogram == {"0": 2, "1": 1, "2": 0, "3": 0, "4": 1, "5-9": 2, "10-19": 1, "20-49": 1, "50+": 2}


def test_expectation_suites_pass_on_valid_data(small_prepared):
    reports = table_suites(small_prepared, max_examples=3) + split_suites(small_prepared, max_examples=3)
    assert [report.suite for report in reports] == ["items", "queries", "judgments", "query_splits",
                                                    "judgment_splits", "query_text_splits", "segments"]
    assert all(report.success for report in reports), [report.summary() for report in reports]


def test_table_suites_report_each_broken_contract(small_prepared):
    items = small_prepared.items.copy()
    items.loc[1, "item_id"] = items.loc[0, "item_id"]
    items.loc[2, "title"] = "  "
    judgments = small_prepared.judgments.copy()
    judgments.loc[0, "relevance"] = 9.0
    judgments.loc[1, "item_id"] = "no-such-item"
    broken = dataclasses.replace(small_prepared, items=items, judgments=judgments)
    failed = {(report.suite, outcome.expectation, outcome.column): outcome
              for report in table_suites(broken, max_examples=3) for outcome in report.failures()}
    assert set(failed) == {
        ("items", "expect_column_values_to_be_unique", "item_id"),
        ("items", "expect_column_values_to_not_match_regex", "title"),
        ("judgments", "expect_column_values_to_be_between", "relevance"),
        ("judgments", "expect_column_values_to_be_null", "unknown_item_id"),
    }
    # overwriting an id also orphans the judgments of the item that had it
    assert "no-such-item" in failed[("judgments", "expect_column_values_to_be_null", "unknown_item_id")].examples


def test_table_suites_cover_the_loaders_text_and_id_rules(small_prepared):
    items = small_prepared.items.copy()
    items.loc[0, "item_id"] = "nul\x00id"
    items.loc[1, "title"] = "\u200b\u200b"
    items.loc[2, "title"] = "steel\x96drill"          # a C1 control the loaders would have repaired
    queries = small_prepared.queries.copy()
    queries.loc[0, "text"] = " \ufeff "
    judgments = small_prepared.judgments.assign(relevance=1.0)   # nothing reaches the threshold
    broken = dataclasses.replace(small_prepared, items=items, queries=queries, judgments=judgments)
    failed = {(report.suite, outcome.expectation, outcome.column): outcome
              for report in table_suites(broken, max_examples=3) for outcome in report.failures()}
    assert failed[("items", "expect_column_values_to_not_match_regex", "item_id")].unexpected_count == 1
    # two regex rules on one column share a key above: count them from the reports
    title_rules = [outcome for report in table_suites(broken, max_examples=3) if report.suite == "items"
                   for outcome in report.failures() if outcome.column == "title"]
    assert sorted(outcome.unexpected_count for outcome in title_rules) == [1, 1]
    assert ("queries", "expect_column_values_to_not_match_regex", "text") in failed
    assert ("judgments", "expect_column_max_to_be_between", "relevance") in failed


def test_split_suites_catch_a_query_in_two_splits(small_prepared):
    judgments = small_prepared.judgments.copy()
    train_row = judgments.index[judgments["split"] == "train"][0]
    judgments.loc[train_row, "split"] = "test"
    failed = [(report.suite, outcome.column) for report in
              split_suites(dataclasses.replace(small_prepared, judgments=judgments), max_examples=3)
              for outcome in report.failures()]
    assert failed == [("judgment_splits", "split")]
