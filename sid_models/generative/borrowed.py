"""Real training queries lent to items that no training query reaches (params `sft.borrowed_queries`).

An item without a relevant training query (77 % of Home Depot's relevant test pairs) is
otherwise learnt from its title and query-like views (`views.py`) alone. A training query
is lent to such an item when the item ranks within the top `depth` for that query in every
channel of `channels`, i.e. when the item sits next to the warm items the query was judged on:
- `bm25`: stemmed BM25 over the item texts (params `bm25`);
- `dense`: the SCI towers' f_q(query) · f_i(item), the dense retriever's score.
Items judged for that query (relevant or not: a rejected item must stay rejected) are never
lent it. Each unreached item keeps its `per_item` best lent queries, best = the smallest
worst rank over the channels, ties by query order, and each becomes one more retrieval pair
of weight `weight` (judged pairs weigh gain / gain of the top grade, at most 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

CHANNELS = ("bm25", "dense")
DENSE_CHUNK = 1024          # queries per dense scoring block ([chunk, n_items] floats)


@dataclass(frozen=True)
class BorrowConfig:
    """params `sft.borrowed_queries`; per_item 0 lends nothing."""

    channels: tuple[str, ...]
    depth: int
    per_item: int
    weight: float

    @classmethod
    def from_params(cls, section: dict) -> "BorrowConfig":
        config = cls(tuple(section["channels"]), int(section["depth"]), int(section["per_item"]),
                     float(section["weight"]))
        unknown = sorted(set(config.channels) - set(CHANNELS))
        if unknown or (config.per_item > 0 and not config.channels):
            raise ValueError(f"sft.borrowed_queries.channels must be a non-empty subset of {list(CHANNELS)}, "
                             f"got {list(config.channels)}")
        if config.depth < 1 or config.per_item < 0 or not 0.0 < config.weight <= 1.0:
            raise ValueError(f"sft.borrowed_queries needs depth >= 1, per_item >= 0 and weight in (0, 1]; got {section}")
        return config

    @property
    def enabled(self) -> bool:
        return self.per_item > 0


def bm25_ranks(query_texts: Sequence[str], item_texts: Sequence[str], bm25_params: dict,
               depth: int) -> np.ndarray:
    """[n_queries, depth] item rows, best first, -1 where fewer items share a term."""
    from ..lexical.bm25 import BM25Retriever

    _, rows = BM25Retriever.from_params(item_texts, bm25_params).search(query_texts, depth)
    return rows


def dense_ranks(query_vectors: np.ndarray, item_vectors: np.ndarray, depth: int) -> np.ndarray:
    """[n_queries, depth] item rows by f_q · f_i, best first (exact search)."""
    depth = min(depth, len(item_vectors))
    ranked = []
    for start in range(0, len(query_vectors), DENSE_CHUNK):
        scores = query_vectors[start:start + DENSE_CHUNK] @ item_vectors.T
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        ranked.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(ranked) if ranked else np.zeros((0, depth), dtype=np.int64)


def lent_pairs(channel_ranks: Sequence[np.ndarray], judged: pd.DataFrame, reached: np.ndarray,
               per_item: int) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, item rows) of the lent pairs (module docstring) from each channel's
    [n_queries, depth] ranked item rows; `judged` has columns query_row, item_row; `reached`
    marks the items that have a relevant training query."""
    if not channel_ranks or per_item == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    per_channel = []
    for ranks in channel_ranks:
        query_row, position = np.nonzero(ranks >= 0)
        per_channel.append(pd.DataFrame({"query_row": query_row, "item_row": ranks[query_row, position],
                                         "rank": position}))
    candidates = per_channel[0]
    for other in per_channel[1:]:       # in every channel's top depth; the worst rank counts
        candidates = candidates.merge(other, on=["query_row", "item_row"], suffixes=("", "_other"))
        candidates["rank"] = np.maximum(candidates["rank"], candidates.pop("rank_other"))
    candidates = candidates[~reached[candidates["item_row"].to_numpy()]]
    judged_keys = set(zip(judged["query_row"].to_numpy().tolist(), judged["item_row"].to_numpy().tolist()))
    keep = [(query, item) not in judged_keys for query, item in
            zip(candidates["query_row"].to_numpy().tolist(), candidates["item_row"].to_numpy().tolist())]
    candidates = candidates[np.asarray(keep, dtype=bool)]
    candidates = candidates.sort_values(["item_row", "rank", "query_row"], kind="stable")
    candidates = candidates[candidates.groupby("item_row").cumcount() < per_item]
    candidates = candidates.sort_values(["query_row", "item_row"], kind="stable")
    return (candidates["query_row"].to_numpy(dtype=np.int64), candidates["item_row"].to_numpy(dtype=np.int64))
