"""SCI assets: MiniLM text features, the dual towers, the consistent dual-view index; their checks."""
import json
from pathlib import Path

import dagster as dg
import numpy as np

from sid_models.data.schema import PreparedDataset
from sid_models.sci.index import DualViewIndex
from sid_models.sci.stage import ITEM_VIEW_FILE, QUERIES_FILE, QUERY_VIEW_FILE

from ..resources import MlflowTracking, ParamsResource
from ..stage_asset import materialize_stage

NORM_TOLERANCE = 1e-3  # float32 unit vectors: |‖x‖ − 1| beyond this means a missing normalisation


@dg.asset(group_name="sci", description="MiniLM (all-MiniLM-L6-v2) features of item and query texts, cached by content hash.")
def text_embeddings(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                    prepared_dataset: str) -> dg.Output[str]:
    return materialize_stage(context, "text_embeddings", {"prepared_dataset": prepared_dataset}, params, mlflow_tracking)


@dg.asset(group_name="sci", description="SCI query and item towers (InfoNCE + input swap), item query/item views, query vectors.")
def sci_towers(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
               prepared_dataset: str, text_embeddings: str) -> dg.Output[str]:
    return materialize_stage(context, "sci_towers", {"prepared_dataset": prepared_dataset,
                                                     "text_embeddings": text_embeddings}, params, mlflow_tracking)


@dg.asset(group_name="sci", description="Consistent dual-view IVF index: coarse cells on the query view, item view stored.")
def sci_index(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
              prepared_dataset: str, text_embeddings: str, sci_towers: str) -> dg.Output[str]:
    return materialize_stage(context, "sci_index", {"prepared_dataset": prepared_dataset,
                                                    "text_embeddings": text_embeddings, "sci_towers": sci_towers},
                             params, mlflow_tracking)


def _vector_problems(folder: Path, files: tuple[str, ...]) -> dict[str, str]:
    problems = {}
    for name in files:
        vectors = np.load(folder / name)
        if not np.isfinite(vectors).all():
            problems[name] = f"{int((~np.isfinite(vectors)).any(axis=1).sum())} rows with non-finite values"
            continue
        worst = float(np.abs(np.linalg.norm(vectors, axis=1) - 1.0).max()) if len(vectors) else 0.0
        if worst > NORM_TOLERANCE:
            problems[name] = f"norm off by {worst:.2e}"
    return problems


@dg.asset_check(asset=text_embeddings, blocking=True, description="Finite, unit-norm vectors, one per item and query.",
                additional_ins={"prepared_dataset": dg.AssetIn("prepared_dataset")})
def text_embeddings_valid(text_embeddings: str, prepared_dataset: str) -> dg.AssetCheckResult:
    folder = Path(text_embeddings)
    problems = _vector_problems(folder, ("items.npy", "queries.npy"))
    meta = json.loads((folder / "meta.json").read_text())
    prepared = PreparedDataset.load(prepared_dataset)
    if (meta["n_items"], meta["n_queries"]) != (len(prepared.items), len(prepared.queries)):
        problems["rows"] = (f"{meta['n_items']} items / {meta['n_queries']} queries embedded, dataset has "
                            f"{len(prepared.items)} / {len(prepared.queries)}")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})


@dg.asset_check(asset=sci_towers, blocking=True, description="Finite, unit-norm tower outputs for every item and query.")
def sci_towers_vectors_valid(sci_towers: str) -> dg.AssetCheckResult:
    problems = _vector_problems(Path(sci_towers), (QUERY_VIEW_FILE, ITEM_VIEW_FILE, QUERIES_FILE))
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)})


@dg.asset_check(asset=sci_towers, blocking=True,
                description="Validation Recall@10 of the towers is not below MiniLM zero-shot, overall and on cold items.")
def sci_towers_beat_minilm(sci_towers: str) -> dg.AssetCheckResult:
    summary = json.loads((Path(sci_towers) / "train.json").read_text())
    metric = f"recall@{summary['train']['eval_k']}"
    towers, minilm = summary["valid"], summary["valid_minilm"]
    return dg.AssetCheckResult(passed=bool(towers[metric] >= minilm[metric]), metadata={
        f"towers_{metric}": towers[metric], f"minilm_{metric}": minilm[metric],
        "towers_recall@10_cold": towers.get("recall@10_cold"), "minilm_recall@10_cold": minilm.get("recall@10_cold"),
        "best_epoch": summary["best_epoch"]})


@dg.asset_check(asset=sci_index, blocking=True,
                description="The index holds every catalogue item in `index.spill` to `index.spill` + "
                            "`index.query_views` distinct lists.",
                additional_ins={"prepared_dataset": dg.AssetIn("prepared_dataset")})
def sci_index_covers_catalogue(sci_index: str, prepared_dataset: str) -> dg.AssetCheckResult:
    index = DualViewIndex.load(sci_index)
    n_items = len(PreparedDataset.load(prepared_dataset).items)
    lists = index.list_assignments()
    filed = (lists >= 0).sum(axis=1)
    # -1 pads the end of a row, so the filed lists of every row must be strictly ascending
    ascending = np.where(lists[:, 1:] >= 0, np.diff(lists, axis=1) > 0, True)
    passed = (index.n_items == n_items and index.ntotal == int(filed.sum()) and bool((filed >= index.spill).all())
              and bool(ascending.all()))
    return dg.AssetCheckResult(passed=passed, metadata={
        "ntotal": index.ntotal, "n_items": n_items, "spill": index.spill, "query_views": index.query_views,
        "mean_lists_per_item": float(filed.mean()), "nlist": index.nlist, "coarse_view": index.coarse_view})
