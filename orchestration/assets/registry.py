"""Registry asset: log + register the generative retriever (RAD-DPO, or SFT when alignment lowered the
validation primary metric), promote it to `champion` only if it beats the champion."""
from pathlib import Path

import dagster as dg
import mlflow
from mlflow import MlflowClient

from sid_models.align.stage import deployable_checkpoint
from sid_models.data.schema import PreparedDataset
from sid_models.serving.pyfunc import log_retriever
from sid_models.serving.registry import decision_record, promote

from ..resources import MlflowTracking, ParamsResource

PROMOTION_CHECK = "beats_champion"


@dg.asset(group_name="registry",
          deps=["eval_report"],
          check_specs=[dg.AssetCheckSpec(PROMOTION_CHECK, asset="registered_model", blocking=True,
                                         description="Candidate >= champion on the primary metric (params "
                                                     "registry) with a no-regression bound on cold items; "
                                                     "a first model passes.")],
          description="The generative retriever as an MLflow pyfunc model, registered: the RAD-DPO checkpoint "
                      "when it beat SFT on the validation primary metric by registry.aligned_min_gain, else SFT. The champion "
                      "alias moves to it only when it passes the promotion check, otherwise it is tagged challenger.")
def registered_model(context: dg.AssetExecutionContext, prepared_dataset: str, text_embeddings: str,
                     semantic_ids: str, sft_checkpoint: str, ranker: str, dpo_checkpoint: str, params: ParamsResource,
                     mlflow_tracking: MlflowTracking):
    config = params.load()
    name = config["registry"]["model_name"]
    chosen, checkpoint, validation = deployable_checkpoint(sft_checkpoint, dpo_checkpoint,
                                                           config["registry"]["primary_metric"],
                                                           config["registry"]["aligned_min_gain"])
    context.log.info(f"registering the {chosen} checkpoint ({validation})")
    with mlflow_tracking.stage_run(context, "registered_model") as run:
        served_ranker = config["registry"]["ranker"]
        mlflow.log_params({"checkpoint": chosen, "checkpoint_path": str(checkpoint), "ranker": served_ranker})
        info = log_retriever(config, checkpoint, semantic_ids, prepared_dataset,
                             registered_model_name=name,
                             ranker=Path(ranker) / served_ranker if served_ranker else None,
                             text_embeddings=text_embeddings)
        version = str(info.registered_model_version)
        decision = promote(MlflowClient(), name, version, PreparedDataset.load(prepared_dataset), config)
    context.log.info(f"{name} version {version}: {'champion' if decision.promote else 'challenger'} — {decision.reason}")
    metadata = {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}",
                "checkpoint": chosen, "ranker": served_ranker or "none", **{key.replace("@", "_at_"): value for key, value in validation.items()},
                "mlflow_run_id": run.info.run_id,
                "decision": "champion" if decision.promote else config["registry"]["challenger_tag"],
                "reason": decision.reason, "previous_champion": decision.champion_version or "none",
                "decision_record": dg.MetadataValue.json(decision_record(decision))}
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[dg.AssetCheckResult(check_name=PROMOTION_CHECK, passed=decision.promote,
                                           severity=dg.AssetCheckSeverity.ERROR,
                                           metadata={"reason": decision.reason,
                                                     "previous_champion": decision.champion_version or "none"})],
    )
