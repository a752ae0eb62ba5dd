"""Stages `sci_towers` (train f_q, f_i) and `sci_index` (consistent dual-view IVF).

sci_towers artifact: `towers.pt` (state_dict) + `towers.json` (the tower kind and its config) — load with
`sid_models.sci.towers.load_towers(folder)`; `item_query_view.npy` f_q(item),
`item_item_view.npy` f_i(item) (items.parquet row order), `queries.npy` f_q(query)
(queries.parquet row order), all float32 L2-normalised; `train.json` (TrainConfig, best
epoch, validation metrics of the towers and of MiniLM zero-shot, and the towers' misalignment
`misalign_{items,queries}_{l2,cos}` untrained and trained: `train.misalignment`) and
`history.json` (per epoch losses, validation metrics and misalignment).

sci_index artifact: `ivf.faiss` (its lists refine the cells when `index.lists_per_cell` > 1; each
item filed in its `index.spill` nearest lists and in the nearest list of each of its
`index.query_views` query-like texts' f_q),
`centroids.npy` (coarse cells, the first SID level: k-means on the query view), `index.json` —
load with `sid_models.sci.index.DualViewIndex.load(folder)` — and `nprobe_sweep.json`
(validation recall@10 of exact search and of each nprobe tried; `index.nprobe: auto` keeps
the smallest that reaches `index.min_recall_ratio` of exact).
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
from .index import DualViewIndex, FlatIndex, dense_rankings, n_lists, rankings
from .train import TrainConfig, new_towers, pseudo_query_inputs, tower_inputs, train_towers as fit_towers

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
    config = TrainConfig.from_params(params["sci"], params["seed"])
    towers = new_towers(params["sci"]["tower"], params["text"], prepared, item_base, query_base, config)
    tracking.log_params({"tower": {"kind": towers.kind, **asdict(towers.config)}, "train": asdict(config)}, prefix="sci")
    item_inputs, query_inputs = tower_inputs(towers, prepared, item_base, query_base, params["text"])
    pseudo = pseudo_query_inputs(towers, prepared, config, params["text"])
    result = fit_towers(prepared, towers, item_inputs, query_inputs, config, log=LOGGER.info, pseudo=pseudo)
    result.towers.save(out)
    np.save(out / QUERY_VIEW_FILE, result.towers.encode_queries(item_inputs))
    np.save(out / ITEM_VIEW_FILE, result.towers.encode_items(item_inputs))
    np.save(out / QUERIES_FILE, result.towers.encode_queries(query_inputs))
    minilm = zero_shot_metrics(prepared, item_base, query_base, "valid", max(config.eval_k, max(RECALL_KS)))
    misaligned = {f"{key}_{when}": record[key] for when, record in
                  (("untrained", result.history[0]), ("trained", result.history[result.best_epoch]))
                  for key in record if key.startswith("misalign_")}
    summary = {"train": asdict(config), "best_epoch": result.best_epoch, "seconds": result.seconds,
               "valid": result.best_valid, "valid_minilm": minilm, "misalignment": misaligned}
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    (out / "history.json").write_text(json.dumps(result.history, indent=2))
    tracking.log_artifact(out / "towers.pt", "towers")
    tracking.log_artifact(out / "towers.json", "towers")
    keys = [f"recall@{config.eval_k}", "recall@50", "ndcg@10", "recall@10_cold", "recall@10_seen"]
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history) - 1,
        "pseudo_queries": 0 if pseudo is None else len(pseudo.items),
        "train_seconds": round(result.seconds, 2),
        **{f"valid_{key}": result.best_valid[key] for key in keys if key in result.best_valid},
        **{f"valid_{key}_minilm": minilm[key] for key in keys if key in minilm},
        **misaligned,
    }


def choose_nprobe(index: DualViewIndex, query_vectors: np.ndarray, exact_recall: float, evaluate_rows,
                  min_recall_ratio: float) -> tuple[int, list[dict]]:
    """The smallest nprobe (1, 2, 4, ... up to every list) whose validation recall keeps
    `min_recall_ratio` of exact search's, and the sweep that found it."""
    sweep, nprobe = [], 1
    while True:
        recall = evaluate_rows(index.search(query_vectors, INDEX_CHECK_K, nprobe)[1])
        sweep.append({"nprobe": nprobe, f"valid_recall@{INDEX_CHECK_K}": recall})
        if recall >= min_recall_ratio * exact_recall or nprobe == index.nlist:
            return nprobe, sweep
        nprobe = min(2 * nprobe, index.nlist)


def query_view_texts(towers, titles: list[str], params: dict, seed: int, progress: bool = True) -> np.ndarray | None:
    """[V, n_items, d] f_q of the params `index.query_views` query-like texts of each title (`text/views.py`),
    base sentence vectors (text.model_name) cached by content hash under params text.cache_dir; None when V is 0."""
    from ..text.encoder import TextEncoder
    from ..text.views import ViewConfig, query_like_views, view_major

    config = ViewConfig.from_params(params["index"]["query_views"], "index.query_views")
    if config.views == 0:
        return None
    texts = view_major(query_like_views(titles, config, seed))
    sentences = TextEncoder.from_params(params["text"], progress=progress)
    vectors = towers.encode_query_texts(texts, lambda batch: sentences.encode(batch, "index query views"))
    return np.asarray(vectors, dtype=np.float32).reshape(config.views, len(titles), -1)


def build_index(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    from .towers import load_towers

    prepared = PreparedDataset.load(inputs["prepared_dataset"])
    towers_folder = inputs["sci_towers"]
    query_view = np.load(towers_folder / QUERY_VIEW_FILE)
    item_view = np.load(towers_folder / ITEM_VIEW_FILE)
    query_vectors = np.load(towers_folder / QUERIES_FILE)
    if len(item_view) != len(prepared.items):
        raise ValueError(f"{towers_folder / ITEM_VIEW_FILE} has {len(item_view)} rows, catalogue has {len(prepared.items)}")
    settings = params["index"]
    nlist = n_lists(len(item_view), settings["nlist"], settings["min_points_per_list"])
    view_texts = query_view_texts(load_towers(towers_folder), prepared.items["title"].astype(str).tolist(), params,
                                  params["seed"])
    index = DualViewIndex.build(query_view, item_view, nlist, settings["niter"], params["seed"], 1,
                                coarse_view=settings["coarse_view"], lists_per_cell=settings["lists_per_cell"],
                                min_points_per_list=settings["min_points_per_list"], spill=settings["spill"],
                                query_view_texts=view_texts, pq_subquantizers=settings["pq_subquantizers"],
                                pq_bits=settings["pq_bits"])
    valid = prepared.split_queries("valid")
    query_ids, item_ids = valid["query_id"].tolist(), prepared.items["item_id"].tolist()
    judged = prepared.split_judgments("valid")
    k = INDEX_CHECK_K
    valid_vectors = query_vectors[valid.index.to_numpy()]

    def recall_of(rows: np.ndarray) -> float:
        return evaluate(rankings(rows, query_ids, item_ids), judged, prepared.scale)[f"recall@{k}"]

    exact = recall_of(FlatIndex(item_view).search(valid_vectors, k)[1])
    if settings["nprobe"] == "auto":
        nprobe, sweep = choose_nprobe(index, valid_vectors, exact, recall_of, settings["min_recall_ratio"])
    elif isinstance(settings["nprobe"], int) and settings["nprobe"] >= 1:
        nprobe = min(settings["nprobe"], index.nlist)
        sweep = [{"nprobe": nprobe, f"valid_recall@{k}": recall_of(index.search(valid_vectors, k, nprobe)[1])}]
    else:
        raise ValueError(f"index.nprobe must be a positive integer or 'auto', got {settings['nprobe']!r}")
    index.nprobe = nprobe
    index.save(out)
    (out / "nprobe_sweep.json").write_text(json.dumps({"exact": exact, "sweep": sweep}, indent=2))
    lists = index.list_assignments()
    sizes = np.bincount(lists[lists >= 0], minlength=index.nlist)
    return {
        "nlist": index.nlist, "n_cells": index.n_cells, "nprobe": index.nprobe, "spill": index.spill,
        "query_views": index.query_views, "n_items": index.n_items, "ntotal": index.ntotal,
        "pq_subquantizers": settings["pq_subquantizers"],
        "coarse_view": index.coarse_view, "largest_list": int(sizes.max()), "empty_lists": int((sizes == 0).sum()),
        f"valid_recall@{k}_exact": exact, f"valid_recall@{k}_ivf": sweep[-1][f"valid_recall@{k}"],
        f"valid_recall@{k}_ivf_ratio": sweep[-1][f"valid_recall@{k}"] / exact if exact else float("nan"),
    }
