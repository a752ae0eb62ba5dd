"""Ranking metrics shared by every system, benchmark and check.

Definitions (queries with at least one relevant judged item only):
- Recall@K: |relevant ∩ top K| / |relevant|, averaged over queries (macro).
- NDCG@10: DCG = Σ_{rank r ≤ 10} gain(item_r) / log2(r + 1) with gain from the dataset's
  scale (unjudged items gain 0); IDCG sorts all the query's judged gains; averaged over queries.
- MRR: 1 / rank of the first relevant item in the returned list (0 if none), averaged.
- recall@10_<segment> (head/torso/tail/cold, and `seen` = head ∪ torso ∪ tail): over the
  relevant (query, item) pairs whose item is in that segment, the fraction found in the
  top 10 (micro-averaged over pairs, since a query's relevant items span segments).
- recall@10_single / recall@10_multi: Recall@10 over queries with one / several relevant items.

Uncertainty (`bootstrap_intervals`): the percentile interval of a macro-averaged metric over
`samples` resamples of the queries with replacement; for the difference of two systems the
same resampled queries score both (a paired bootstrap).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.schema import RelevanceScale

RECALL_KS = (1, 5, 10, 50)
NDCG_K = 10
SEGMENT_K = 10
SEEN_SEGMENTS = ("head", "torso", "tail")


def evaluate(rankings: Mapping[str, Sequence[str]], judgments: pd.DataFrame, scale: RelevanceScale,
             item_segment: Mapping[str, str] | None = None) -> dict[str, float]:
    """The metrics of the module docstring, averaged (see `per_query` for the values per query)."""
    return _evaluate(rankings, judgments, scale, item_segment)[0]


def per_query(rankings: Mapping[str, Sequence[str]], judgments: pd.DataFrame,
              scale: RelevanceScale) -> pd.DataFrame:
    """One row per query with a relevant item (query_id, recall@K, ndcg@10, mrr), the values whose
    means `evaluate` reports."""
    return _evaluate(rankings, judgments, scale, None)[1]


def bootstrap_intervals(values: Mapping[str, np.ndarray], samples: int, seed: int,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """(low, high) percentile interval of the mean of each array in `values` (one value per
    query, all in the same query order), every array resampled with the same query draws."""
    lengths = {len(array) for array in values.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"bootstrap needs equally long non-empty per-query arrays, got lengths {sorted(lengths)}")
    n = lengths.pop()
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    tail = (1 - level) / 2 * 100
    out = {}
    for name, array in values.items():
        means = np.asarray(array, dtype=np.float64)[draws].mean(axis=1)
        low, high = np.percentile(means, [tail, 100 - tail])
        out[name] = (float(low), float(high))
    return out


def _evaluate(rankings, judgments, scale, item_segment) -> tuple[dict[str, float], pd.DataFrame]:
    """Score ranked item lists against graded judgments.

    `rankings`: query_id -> item ids, best first. A query with relevant judgments but no
    ranking counts as a miss (score 0), never as skipped.
    `judgments`: columns query_id, item_id, relevance (the evaluated split only).
    `item_segment`: item_id -> head/torso/tail/cold, for the per-segment breakdown.
    """
    judged = judgments[["query_id", "item_id", "relevance"]]
    gains_by_query = {query: dict(zip(group["item_id"], scale.gain(group["relevance"])))
                      for query, group in judged.groupby("query_id", sort=False)}
    relevant_by_query = {query: set(group.loc[group["relevance"] >= scale.threshold, "item_id"])
                         for query, group in judged.groupby("query_id", sort=False)}
    relevant_by_query = {query: items for query, items in relevant_by_query.items() if items}
    if not relevant_by_query:
        raise ValueError("no query has a relevant judged item: nothing to evaluate")

    recalls = {k: [] for k in RECALL_KS}
    ndcgs, reciprocal_ranks, n_relevant = [], [], []
    segment_hits: dict[str, list[bool]] = {}
    for query, relevant in relevant_by_query.items():
        ranked = list(rankings.get(query, ()))
        for k in RECALL_KS:
            recalls[k].append(len(relevant.intersection(ranked[:k])) / len(relevant))
        gains = gains_by_query[query]
        dcg = sum(gains.get(item, 0.0) / np.log2(rank + 2) for rank, item in enumerate(ranked[:NDCG_K]))
        ideal = sorted(gains.values(), reverse=True)[:NDCG_K]
        idcg = sum(gain / np.log2(rank + 2) for rank, gain in enumerate(ideal))
        ndcgs.append(dcg / idcg if idcg > 0 else 0.0)
        first = next((rank for rank, item in enumerate(ranked) if item in relevant), None)
        reciprocal_ranks.append(0.0 if first is None else 1.0 / (first + 1))
        n_relevant.append(len(relevant))
        if item_segment is not None:
            top = set(ranked[:SEGMENT_K])
            for item in relevant:
                segment = item_segment.get(item, "cold")
                segment_hits.setdefault(segment, []).append(item in top)
                if segment in SEEN_SEGMENTS:
                    segment_hits.setdefault("seen", []).append(item in top)

    n_relevant_arr = np.array(n_relevant)
    recall_at_segment_k = np.array(recalls[SEGMENT_K])
    result = {f"recall@{k}": float(np.mean(values)) for k, values in recalls.items()}
    result["ndcg@10"] = float(np.mean(ndcgs))
    result["mrr"] = float(np.mean(reciprocal_ranks))
    result["n_queries"] = len(relevant_by_query)
    for name, mask in (("single", n_relevant_arr == 1), ("multi", n_relevant_arr >= 2)):
        if mask.any():
            result[f"recall@{SEGMENT_K}_{name}"] = float(recall_at_segment_k[mask].mean())
            result[f"n_queries_{name}"] = int(mask.sum())
    for segment, hits in sorted(segment_hits.items()):
        result[f"recall@{SEGMENT_K}_{segment}"] = float(np.mean(hits))
        result[f"n_pairs_{segment}"] = len(hits)
    queries = pd.DataFrame({"query_id": list(relevant_by_query), **{f"recall@{k}": values for k, values
                                                                    in recalls.items()},
                            "ndcg@10": ndcgs, "mrr": reciprocal_ranks})
    return result, queries

