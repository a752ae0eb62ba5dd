"""Out-of-fold query vectors: f_q of each training query from towers that never trained on it.

The SFT model reads the SCI query vector f_q(query) beside the query's tokens. The towers were
trained on the training pairs, so a training query's f_q finds its own positives far better than
a new query's does (Home Depot, seed 0, exact search: Recall@10 .79 on training queries against
.50 on validation), and a generator trained on those vectors learns to trust a signal that is
worth much less at serving time. Here the training queries are dealt into `folds` seeded folds;
for each fold, towers of the same kind and recipe (params sci) are trained on the judged pairs of
the other folds' queries, and the fold's queries read their f_q. Separately trained towers live
in a slightly different space, so each fold's vectors are first rotated onto the reference
towers' (the sci_towers artifact's) by orthogonal Procrustes fitted on f_q of every item text:
R = argmin_{R orthogonal} ||A R − B||_F = U Vᵀ with U Σ Vᵀ = svd(Aᵀ B), A the fold towers' f_q(items),
B the reference towers'.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ..data.schema import PreparedDataset
from .train import TrainConfig, new_towers, subset, tower_inputs, train_towers, validation_metrics

HELD_OUT = "held_out"           # the split label a fold's queries (and their judgments) carry while it is held out
EVAL_K = 10


def fold_of_queries(prepared: PreparedDataset, folds: int, seed: int) -> dict[str, int]:
    """query_id -> fold (0..folds-1) of every training query with a relevant training judgment,
    dealt round-robin over a seeded permutation so the folds differ in size by at most one."""
    if folds < 2:
        raise ValueError(f"out-of-fold query vectors need at least 2 folds, got {folds}")
    queries = np.asarray(sorted(set(prepared.relevant("train")["query_id"].astype(str))))
    if len(queries) < folds:
        raise ValueError(f"{len(queries)} training queries with a relevant item cannot fill {folds} folds")
    order = np.random.default_rng(seed).permutation(len(queries))
    return {str(query): position % folds for position, query in enumerate(queries[order])}


def hold_out(prepared: PreparedDataset, held: set[str]) -> PreparedDataset:
    """`prepared` with the queries `held` (and their judgments) moved to split HELD_OUT."""
    queries, judgments = prepared.queries.copy(), prepared.judgments.copy()
    queries.loc[queries["query_id"].astype(str).isin(held), "split"] = HELD_OUT
    judgments.loc[judgments["query_id"].astype(str).isin(held), "split"] = HELD_OUT
    return replace(prepared, queries=queries, judgments=judgments)


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal R minimising ||source R − target||_F: U Vᵀ of svd(sourceᵀ target)."""
    u, _, vt = np.linalg.svd(source.astype(np.float64).T @ target.astype(np.float64))
    return (u @ vt).astype(np.float32)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def out_of_fold_query_vectors(prepared: PreparedDataset, sci_params: dict, text_params: dict, seed: int,
                              folds: int, reference_queries: np.ndarray, reference_towers,
                              sentence_vectors: Callable[[list[str]], np.ndarray],
                              log: Callable[[str], None] = lambda message: None) -> tuple[np.ndarray, dict]:
    """(f_q of every query in queries.parquet order, with each fold's training queries replaced by
    the rotated f_q of towers trained without that fold; figures per fold). `reference_queries`:
    the reference towers' f_q of every query; `sentence_vectors`: texts -> base sentence vectors
    (the text_embeddings artifact's, through the content-hash cache)."""
    item_base = sentence_vectors(prepared.item_text().tolist())
    query_base = sentence_vectors(prepared.queries["text"].astype(str).tolist())
    fold_of = fold_of_queries(prepared, folds, seed)
    query_ids = prepared.queries["query_id"].astype(str).to_numpy()
    vectors = np.array(reference_queries, dtype=np.float32, copy=True)
    reference_items = reference_inputs = None
    figures: dict[str, float] = {"query_vector_folds": folds}
    config = TrainConfig.from_params(sci_params, seed)
    for fold in range(folds):
        held = {query for query, owner in fold_of.items() if owner == fold}
        fold_data = hold_out(prepared, held)
        towers = new_towers(sci_params["tower"], text_params, fold_data, item_base, query_base, config)
        item_inputs, query_inputs = tower_inputs(towers, fold_data, item_base, query_base, text_params)
        if reference_items is None:
            reference_inputs = tower_inputs(reference_towers, prepared, item_base, query_base, text_params)
            reference_items = reference_towers.encode_queries(reference_inputs[0])
        trained = train_towers(fold_data, towers, item_inputs, query_inputs, config,
                               log=lambda message: log(f"fold {fold}: {message}")).towers
        fold_items = trained.encode_queries(item_inputs)
        rotation = procrustes(fold_items, reference_items)
        rows = np.flatnonzero(np.isin(query_ids, list(held)))
        vectors[rows] = unit_rows(trained.encode_queries(subset(query_inputs, rows)) @ rotation)
        held_out = validation_metrics(trained, fold_data, item_inputs, query_inputs, HELD_OUT, EVAL_K)
        seen = validation_metrics(reference_towers, fold_data, *reference_inputs, HELD_OUT, EVAL_K)
        figures.update({
            f"fold{fold}_queries": len(rows),
            f"fold{fold}_item_cos_before": float(np.mean(np.sum(fold_items * reference_items, axis=1))),
            f"fold{fold}_item_cos_rotated": float(np.mean(np.sum(unit_rows(fold_items @ rotation) * reference_items,
                                                                 axis=1))),
            f"fold{fold}_recall@10_out_of_fold": held_out["recall@10"],
            f"fold{fold}_recall@10_reference": seen["recall@10"],
        })
        log(f"fold {fold}: {len(rows)} queries; recall@10 on them {held_out['recall@10']:.4f} out of fold against "
            f"{seen['recall@10']:.4f} from the towers that trained on them")
    return vectors, figures
