"""Stages `sci_towers` (train f_q, f_i) and `sci_index` (consistent dual-view IVF).

sci_towers artifact: `towers.pt` (state_dict) + `towers.json` (TowerConfig) — load with
`sid_models.sci.towers.load_towers(folder)`; `item_query_view.npy` f_q(item),
`item_item_view.npy` f_i(item) (items.parquet row order), `queries.npy` f_q(query)
(queries.parquet row order), all float32 L2-normalised; `train.json` (TrainConfig, best
epoch, validation metrics of the towers and of MiniLM zero-shot) and `history.json` (per
epoch losses and validation metrics).

sci_index artifact: `ivf.faiss`, `centroids.npy` (coarse cells: k-means on the query view)
and `index.json` — load with `sid_models.sci.index.DualViewIndex.load(folder)`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import tracking
from ..data.schema import PreparedDataset
from ..shared.metrics import RECALL_KS, evaluate
from ..text.stage import load_embeddings
from .index import DualViewIndex, FlatIndex, dense_rankings, n_lists
from .towers import TowerConfig
from .train import TrainConfig, train_towers as fit_towers

LOGGER = logging.getLogger(__name__)
QUERY_VIEW_FILE = "item_query_view.npy"
ITEM_VIEW_FILE = "item_item_view.npy"
QUERIES_FILE = "queries.npy"

INDEX_CHECK_K = 10           # recall@k of the IVF index against exact search on validation


def zero_shot_metrics(prepared: PreparedDataset, item_base: np.ndarray, query_base: np.ndarray,
                      split: str, k: int) -> dict[str, float]:
    """Metrics of exact search with the raw MiniLM features (the zero-shot dense baseline)."""
    queries = prepared.split_queries(split)
    ranked = dense_rankings(query_base[queries.index.to_numpy()], FlatIndex(item_base), k,
                            queries["query_id"].tolist(), prepared.items["item_id"].tolist())
    segment = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    return evaluate(ranked, prepared.split_judgments(split), prepared.scale, segment)


def train_towers(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    prepared = PreparedDataset.load(inputs["prepared_dataset"])
    item_base, query_base = load_embeddings(inputs["text_embeddings"])
    tower_config = TowerConfig(in_dim=int(item_base.shape[1]), **params["sci"]["tower"])
    config = TrainConfig.from_params(params["sci"], params["seed"])
    tracking.log_params({"tower": asdict(tower_config), "train": asdict(config)}, prefix="sci")
    result = fit_towers(prepared, item_base, query_base, tower_config, config, log=LOGGER.info)
    result.towers.save(out)
    np.save(out / QUERY_VIEW_FILE, result.towers.encode_queries(item_base))
    np.save(out / ITEM_VIEW_FILE, result.towers.encode_items(item_base))
    np.save(out / QUERIES_FILE, result.towers.encode_queries(query_base))
    minilm = zero_shot_metrics(prepared, item_base, query_base, "valid", max(config.eval_k, max(RECALL_KS)))
    summary = {"train": asdict(config), "best_epoch": result.best_epoch, "seconds": result.seconds,
               "valid": result.best_valid, "valid_minilm": minilm}
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    (out / "history.json").write_text(json.dumps(result.history, indent=2))
    tracking.log_artifact(out / "towers.pt", "towers")
    tracking.log_artifact(out / "towers.json", "towers")
    keys = [f"recall@{config.eval_k}", "recall@50", "ndcg@10", "recall@10_cold", "recall@10_seen"]
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history) - 1,
        "train_seconds": round(result.seconds, 2),
        **{f"valid_{key}": result.best_valid[key] for key in keys if key in result.best_valid},
        **{f"valid_{key}_minilm": minilm[key] for key in keys if key in minilm},
    }


def build_index(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    prepared = PreparedDataset.load(inputs["prepared_dataset"])
    towers_folder = inputs["sci_towers"]
    query_view = np.load(towers_folder / QUERY_VIEW_FILE)
    item_view = np.load(towers_folder / ITEM_VIEW_FILE)
    query_vectors = np.load(towers_folder / QUERIES_FILE)
    if len(item_view) != len(prepared.items):
        raise ValueError(f"{towers_folder / ITEM_VIEW_FILE} has {len(item_view)} rows, catalogue has {len(prepared.items)}")
    settings = params["index"]
    nlist = n_lists(len(item_view), settings["nlist"], settings["min_points_per_list"])
    index = DualViewIndex.build(query_view, item_view, nlist, settings["niter"], params["seed"],
                                min(settings["nprobe"], nlist), coarse_view=settings["coarse_view"])
    index.save(out)
    valid = prepared.split_queries("valid")
    query_ids, item_ids = valid["query_id"].tolist(), prepared.items["item_id"].tolist()
    judged = prepared.split_judgments("valid")
    k = INDEX_CHECK_K
    exact = evaluate(dense_rankings(query_vectors[valid.index.to_numpy()], FlatIndex(item_view), k, query_ids, item_ids),
                     judged, prepared.scale)
    ivf = evaluate(dense_rankings(query_vectors[valid.index.to_numpy()], index, k, query_ids, item_ids),
                   judged, prepared.scale)
    sizes = np.bincount(index.list_assignments(), minlength=nlist)
    return {
        "nlist": nlist, "nprobe": index.nprobe, "ntotal": index.ntotal, "coarse_view": index.coarse_view,
        "largest_list": int(sizes.max()), "empty_lists": int((sizes == 0).sum()),
        f"valid_recall@{k}_exact": exact[f"recall@{k}"], f"valid_recall@{k}_ivf": ivf[f"recall@{k}"],
    }
