"""Evaluation asset: every system side by side in one report (Markdown + HTML + metrics.json)."""
import base64
import json
from pathlib import Path

import dagster as dg

from sid_models.eval.systems import system_rows

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import materialize_stage


@dg.asset(group_name="evaluation",
          description="BM25, MiniLM, dual tower, SCI and the generative retrievers (TIGER SIDs, SARQ+ACRQ SIDs, "
                      "+vanilla DPO, +RAD-DPO) on the test split: quality by segment, SID statistics, speed.")
def eval_report(context: dg.AssetExecutionContext, prepared_dataset: str, text_embeddings: str, sci_towers: str,
                sci_index: str, semantic_ids: str, sft_checkpoint: str, ranker: str, dpo_checkpoint: str,
                params: ParamsResource, mlflow_tracking: MlflowTracking) -> dg.Output[str]:
    inputs = {"prepared_dataset": prepared_dataset, "text_embeddings": text_embeddings, "sci_towers": sci_towers,
              "sci_index": sci_index, "semantic_ids": semantic_ids, "sft_checkpoint": sft_checkpoint,
              "ranker": ranker, "dpo_checkpoint": dpo_checkpoint}
    output = materialize_stage(context, "eval_report", inputs, params, mlflow_tracking)
    folder = Path(output.value)
    metadata = dict(output.metadata)
    # materialize_stage's metadata values arrive wrapped (TextMetadataValue); re-type them for the UI
    metadata["quality_table"] = dg.MetadataValue.md(metadata["quality_table"].value)
    metadata["report_html"] = dg.MetadataValue.path(metadata["report_html"].value)
    png = base64.b64encode((folder / "plots" / "recall_by_segment.png").read_bytes()).decode()
    metadata["recall_by_segment"] = dg.MetadataValue.md(f"![Recall@10 by segment](data:image/png;base64,{png})")
    return dg.Output(output.value, metadata=metadata)


@dg.asset_check(asset=eval_report, blocking=True,
                description="Every configured system was evaluated and every headline figure is a finite number.")
def eval_report_complete(eval_report: str, params: ParamsResource) -> dg.AssetCheckResult:
    expected = list(system_rows(params.load()))          # the rows switched on
    systems = json.loads((Path(eval_report) / "systems.json").read_text())
    missing = [name for name in expected if name not in systems]
    bad = {name: key for name, figures in systems.items() for key, value in figures.items()
           if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf"))}
    return dg.AssetCheckResult(passed=not missing and not bad,
                               metadata={"systems": len(systems), "missing": str(missing), "non_finite": str(bad)})
