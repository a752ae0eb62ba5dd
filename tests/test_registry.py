"""Promotion rule and its record in a real (temporary) MLflow model registry."""
from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from sid_models.serving.registry import aliased_version, decide, decision_record, record_decision

RULE = {"primary_metric": "ndcg@10", "min_improvement": 0.0, "cold_metric": "recall@10_cold",
        "cold_tolerance": 0.02, "champion_alias": "champion", "challenger_tag": "challenger"}


def test_first_model_becomes_champion():
    decision = decide({"ndcg@10": 0.1, "recall@10_cold": 0.0}, None, RULE)
    assert decision.promote and "first model" in decision.reason


@pytest.mark.parametrize("candidate, promote, failed", [
    ({"ndcg@10": 0.50, "recall@10_cold": 0.40}, True, None),        # ties the champion: newer data wins
    ({"ndcg@10": 0.55, "recall@10_cold": 0.385}, True, None),       # cold drop within tolerance
    ({"ndcg@10": 0.49, "recall@10_cold": 0.60}, False, "primary"),  # worse on the primary metric
    ({"ndcg@10": 0.70, "recall@10_cold": 0.37}, False, "cold"),     # better overall, forgets cold items
])
def test_candidate_must_match_the_champion_and_keep_cold_items(candidate, promote, failed):
    decision = decide(candidate, {"ndcg@10": 0.50, "recall@10_cold": 0.40}, RULE, champion_version="3")
    assert decision.promote is promote
    if failed:
        assert decision.checks[failed] is False
    assert decision.champion_version == "3"


def test_min_improvement_raises_the_bar():
    rule = {**RULE, "min_improvement": 0.05}
    assert not decide({"ndcg@10": 0.54}, {"ndcg@10": 0.50}, rule).promote
    assert decide({"ndcg@10": 0.56}, {"ndcg@10": 0.50}, rule).promote


def test_cold_bound_is_skipped_only_when_a_side_has_no_cold_items():
    decision = decide({"ndcg@10": 0.6}, {"ndcg@10": 0.5, "recall@10_cold": 0.9}, RULE)
    assert decision.promote and "not applicable" in decision.reason


def test_missing_primary_metric_is_an_error():
    with pytest.raises(KeyError, match="ndcg@10"):
        decide({"recall@10": 0.5}, None, RULE)


@pytest.fixture
def client(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield MlflowClient()
    mlflow.set_tracking_uri(previous)


def _version(client, tmp_path, name="m"):
    if aliased_version(client, name, "champion") is None and not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    source = tmp_path / "model"
    source.mkdir(exist_ok=True)
    return str(client.create_model_version(name, source.as_uri()).version)


def test_alias_moves_on_pass_and_challenger_is_tagged_on_fail(client, tmp_path):
    assert aliased_version(client, "m", "champion") is None
    first = _version(client, tmp_path)
    record_decision(client, "m", first, decide({"ndcg@10": 0.5, "recall@10_cold": 0.4}, None, RULE), RULE)
    assert str(aliased_version(client, "m", "champion").version) == first

    worse = _version(client, tmp_path)
    decision = decide({"ndcg@10": 0.4, "recall@10_cold": 0.4}, {"ndcg@10": 0.5, "recall@10_cold": 0.4}, RULE, first)
    record_decision(client, "m", worse, decision, RULE)
    assert str(aliased_version(client, "m", "champion").version) == first
    tags = client.get_model_version("m", worse).tags
    assert tags["challenger"] == "true" and tags["promotion.decision"] == "challenger"
    assert tags["candidate.ndcg_at_10"] == "0.4" and tags["champion.ndcg_at_10"] == "0.5"
    assert tags["promotion.previous_champion"] == first

    better = _version(client, tmp_path)
    decision = decide({"ndcg@10": 0.6, "recall@10_cold": 0.4}, {"ndcg@10": 0.5, "recall@10_cold": 0.4}, RULE, first)
    record_decision(client, "m", better, decision, RULE)
    assert str(aliased_version(client, "m", "champion").version) == better
    assert decision_record(decision)["champion"] == {"ndcg@10": 0.5, "recall@10_cold": 0.4}
