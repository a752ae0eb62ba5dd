"""Promotion in the MLflow model registry: candidate vs the `champion` alias.

Rule (params.yaml `registry`): the candidate passes when, measured on the same split with the
same code,
- primary metric: candidate >= champion + `min_improvement`, and
- cold items (no-regression bound): candidate `cold_metric` >= champion's - `cold_tolerance`
  (checked when both have that metric, i.e. the split has relevant cold items).
A first model (no champion yet) passes. Passing moves the alias to the candidate; failing
tags the candidate `challenger`. Either way the version records the decision, its reason and
both metric sets as tags (`candidate.<metric>`, `champion.<metric>`, '@' spelt `_at_`), so the registry alone
tells why an alias points where it does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from .. import tracking
from ..tracking import mlflow_key

RECORDED_METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "ndcg@10", "mrr",
                    "recall@10_head", "recall@10_torso", "recall@10_tail", "recall@10_cold",
                    "recall@10_single", "recall@10_multi", "n_queries")


@dataclass
class PromotionDecision:
    promote: bool
    reason: str
    candidate: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)


def decide(candidate: Mapping[str, float], champion: Mapping[str, float] | None, registry: Mapping,
           champion_version: str | None = None) -> PromotionDecision:
    """Apply the promotion rule of this module's docstring to two metric sets."""
    primary, cold = registry["primary_metric"], registry["cold_metric"]
    if primary not in candidate:
        raise KeyError(f"candidate metrics lack the primary metric {primary!r}; have {sorted(candidate)}")
    if champion is None:
        return PromotionDecision(True, "no champion yet: the first model becomes champion", dict(candidate))
    if primary not in champion:
        raise KeyError(f"champion metrics lack the primary metric {primary!r}; have {sorted(champion)}")
    needed = champion[primary] + float(registry["min_improvement"])
    checks = {"primary": candidate[primary] >= needed}
    reasons = [f"{primary} {candidate[primary]:.4f} {'>=' if checks['primary'] else '<'} "
               f"champion {champion[primary]:.4f} + {float(registry['min_improvement'])}"]
    if cold in candidate and cold in champion:
        floor = champion[cold] - float(registry["cold_tolerance"])
        checks["cold"] = candidate[cold] >= floor
        reasons.append(f"{cold} {candidate[cold]:.4f} {'>=' if checks['cold'] else '<'} "
                       f"champion {champion[cold]:.4f} - {float(registry['cold_tolerance'])}")
    else:
        reasons.append(f"{cold} bound not applicable (no relevant cold items in the split)")
    return PromotionDecision(all(checks.values()), "; ".join(reasons), dict(candidate), dict(champion),
                             champion_version, checks)


def aliased_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at, or None when the model or the alias does not exist yet."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else client.get_model_version(name, version)


def record_decision(client: MlflowClient, name: str, version: str, decision: PromotionDecision,
                    registry: Mapping) -> None:
    """Move the champion alias (pass) or tag the version challenger (fail); record why on the version."""
    tags = {"promotion.decision": "champion" if decision.promote else registry["challenger_tag"],
            "promotion.reason": decision.reason,
            "promotion.primary_metric": registry["primary_metric"],
            "promotion.previous_champion": decision.champion_version or "none"}
    tags.update({mlflow_key(f"candidate.{key}"): f"{value:.6g}" for key, value in decision.candidate.items()
                 if key in RECORDED_METRICS})
    if decision.champion is not None:
        tags.update({mlflow_key(f"champion.{key}"): f"{value:.6g}" for key, value in decision.champion.items()
                     if key in RECORDED_METRICS})
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=version_description(decision, registry))
    if decision.promote:
        client.set_registered_model_alias(name, registry["champion_alias"], version)
    else:
        client.set_model_version_tag(name, version, registry["challenger_tag"], "true")


def version_description(decision: PromotionDecision, registry: Mapping) -> str:
    """What the MLflow UI shows for a model version: the decision, why, and its metrics."""
    metrics = ", ".join(f"{key} {value:.4f}" for key, value in decision.candidate.items() if key in RECORDED_METRICS)
    verdict = "champion" if decision.promote else f"{registry['challenger_tag']} (not promoted)"
    return f"{verdict}: {decision.reason}. Measured through its pyfunc on the eval split: {metrics}."


def decision_record(decision: PromotionDecision) -> dict:
    """The decision as a JSON-able dict: promote flag, reason, checks, both metric sets."""
    return {"promote": decision.promote, "reason": decision.reason, "checks": decision.checks,
                       "champion_version": decision.champion_version,
                       "candidate": {k: v for k, v in decision.candidate.items() if k in RECORDED_METRICS},
                       "champion": None if decision.champion is None else
                       {k: v for k, v in decision.champion.items() if k in RECORDED_METRICS}}


def evaluate_model_uri(model_uri: str, prepared, split: str, depth: int, batch: int) -> dict[str, float]:
    """Quality metrics of a logged/registered pyfunc model on `split`, through its predict()."""
    import mlflow

    from ..eval.harness import measure
    from .pyfunc import PyfuncSearcher

    searcher = PyfuncSearcher(mlflow.pyfunc.load_model(model_uri))
    result, _ = measure(model_uri, searcher, prepared, split, depth, batch, latency_queries=0)
    return result.metrics


def promote(client: MlflowClient, name: str, version: str, prepared, params: Mapping) -> PromotionDecision:
    """Measure candidate `version` and the current champion on the same split, decide, record.

    Both models are loaded from the registry and queried through their pyfunc interface,
    so the comparison is between what would actually be served, on today's data.
    """
    registry, settings = params["registry"], params["eval"]
    champion = aliased_version(client, name, registry["champion_alias"])

    def metrics(model_version: str) -> dict[str, float]:
        return evaluate_model_uri(f"models:/{name}/{model_version}", prepared, settings["split"], settings["depth"],
                                  settings["throughput_batch"])

    candidate = metrics(version)
    champion_metrics = None if champion is None else metrics(champion.version)
    decision = decide(candidate, champion_metrics, registry, None if champion is None else str(champion.version))
    tracking.log_metrics({mlflow_key(f"candidate.{key}"): value for key, value in candidate.items()})
    if champion_metrics is not None:
        tracking.log_metrics({mlflow_key(f"champion.{key}"): value for key, value in champion_metrics.items()})
    record_decision(client, name, version, decision, registry)
    return decision
