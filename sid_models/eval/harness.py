"""Run one retrieval system over a split: quality (shared metrics) and speed, the same way for all.

A *searcher* is any object with `search(queries: list[str], k: int) ->
list[list[tuple[item_id, score]]]` (best first). Every system of the report — BM25, dense
retrievers, the generative retrievers, the packaged MLflow model — is measured through that
one method, from query text, so the speed figures include text encoding.

Speed: throughput is the number of queries divided by the wall time of ranking the whole
split in batches of `throughput_batch`; latency p50/p95 are over `latency_queries` queries
sent one at a time (batch 1), after one untimed warm-up call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from ..data.schema import PreparedDataset
from ..shared.metrics import evaluate


class Searcher(Protocol):
    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]: ...


@dataclass
class SystemResult:
    """Quality metrics (keys of `metrics.evaluate`) and speed figures of one system."""

    name: str
    metrics: dict[str, float]
    speed: dict[str, float] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        return {**self.metrics, **self.speed}


def rank(searcher: Searcher, texts: Sequence[str], depth: int, batch: int) -> list[list[tuple[str, float]]]:
    """`searcher`'s top-`depth` results for every text, asked `batch` texts at a time."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(texts), batch):
        chunk = list(texts[start:start + batch])
        found = searcher.search(chunk, depth)
        if len(found) != len(chunk):
            raise ValueError(f"{type(searcher).__name__}.search returned {len(found)} result lists "
                             f"for {len(chunk)} queries")
        results.extend(found)
    return results


def split_queries(prepared: PreparedDataset, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(queries with at least one relevant judgment in `split`, that split's judgments)."""
    judgments = prepared.split_judgments(split)
    if judgments.empty:
        raise ValueError(f"split {split!r} has no judgments in dataset {prepared.name!r}")
    with_relevant = set(judgments.loc[judgments["relevant"], "query_id"])
    queries = prepared.split_queries(split)
    queries = queries[queries["query_id"].isin(with_relevant)].reset_index(drop=True)
    if queries.empty:
        raise ValueError(f"split {split!r} of dataset {prepared.name!r} has no query with a relevant item")
    return queries, judgments


def latency_ms(searcher: Searcher, texts: Sequence[str], depth: int) -> np.ndarray:
    """Milliseconds per single-query call, one per text (after one untimed warm-up call)."""
    if not texts:
        raise ValueError("latency needs at least one query")
    searcher.search([texts[0]], depth)
    timings = []
    for text in texts:
        start = time.perf_counter()
        searcher.search([text], depth)
        timings.append((time.perf_counter() - start) * 1000.0)
    return np.array(timings)


def measure(name: str, searcher: Searcher, prepared: PreparedDataset, split: str, depth: int,
            throughput_batch: int, latency_queries: int,
            item_segment: Mapping[str, str] | None = None) -> tuple[SystemResult, dict[str, list[str]]]:
    """Rank `split`'s queries with `searcher`, score the rankings, time it; returns (result, rankings)."""
    queries, judgments = split_queries(prepared, split)
    texts = queries["text"].astype(str).tolist()
    if item_segment is None:
        item_segment = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    start = time.perf_counter()
    results = rank(searcher, texts, depth, throughput_batch)
    seconds = time.perf_counter() - start
    rankings = {query_id: [item for item, _ in found] for query_id, found in zip(queries["query_id"], results)}
    metrics = evaluate(rankings, judgments, prepared.scale, item_segment)
    timings = latency_ms(searcher, texts[:latency_queries], depth) if latency_queries > 0 else np.array([])
    speed = {"qps": len(texts) / seconds, "seconds": seconds}
    if len(timings):
        speed.update(p50_ms=float(np.percentile(timings, 50)), p95_ms=float(np.percentile(timings, 95)))
    return SystemResult(name, metrics, speed), rankings
