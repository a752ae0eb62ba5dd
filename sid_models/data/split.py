"""Query-level splits by salted hash, and item popularity segments from the training split."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .schema import Dataset, PreparedDataset


def assign_splits(query_ids: pd.Series, salt: str, valid_fraction: float, test_fraction: float) -> pd.Series:
    """Map each key (a query's id or normalised text) to train/valid/test by a salted SHA-1 of it.

    The hash makes a query's split independent of the rest of the data: adding queries
    never moves an existing query to another split; a new salt draws a new split.
    """
    if not (valid_fraction >= 0 and test_fraction >= 0 and valid_fraction + test_fraction < 1):
        raise ValueError(f"split fractions must be >= 0 and sum below 1, got valid={valid_fraction} test={test_fraction}")
    buckets = np.array([
        int.from_bytes(hashlib.sha1(f"{salt}:{query_id}".encode()).digest()[:8], "big") / 2**64
        for query_id in query_ids.astype(str)
    ])
    splits = np.where(buckets < test_fraction, "test",
                      np.where(buckets < test_fraction + valid_fraction, "valid", "train"))
    return pd.Series(splits, index=query_ids.index, name="split")


def split_key(texts: pd.Series) -> pd.Series:
    """Queries are split by their normalised text (case, surrounding and repeated spaces ignored),
    so two query ids with the same text never land in different splits (no test leakage)."""
    return texts.astype(str).str.lower().str.split().str.join(" ")


def item_segments(items: pd.DataFrame, train_relevant: pd.DataFrame, head_min_exposure: int,
                  torso_min_exposure: int) -> pd.DataFrame:
    """Exposure (relevant training judgments per item) and segment head/torso/tail/cold."""
    if not 1 <= torso_min_exposure <= head_min_exposure:
        raise ValueError(f"need 1 <= torso_min_exposure ({torso_min_exposure}) <= head_min_exposure ({head_min_exposure})")
    exposure = train_relevant.groupby("item_id").size()
    counts = items["item_id"].map(exposure).fillna(0).astype(np.int64).to_numpy()
    segment = np.select([counts >= head_min_exposure, counts >= torso_min_exposure, counts >= 1],
                        ["head", "torso", "tail"], default="cold")
    return pd.DataFrame({"item_id": items["item_id"].to_numpy(), "exposure": counts, "segment": segment})


def prepare(dataset: Dataset, split_params: dict, segment_params: dict) -> PreparedDataset:
    """Attach the query split, the `relevant` flag and item segments to a validated dataset."""
    queries = dataset.queries.copy()
    queries["split"] = assign_splits(split_key(queries["text"]), split_params["salt"],
                                     split_params["valid_fraction"], split_params["test_fraction"])
    judgments = dataset.judgments.copy()
    judgments["split"] = judgments["query_id"].map(queries.set_index("query_id")["split"])
    judgments["relevant"] = judgments["relevance"] >= dataset.scale.threshold
    train_relevant = judgments[(judgments["split"] == "train") & judgments["relevant"]]
    segments = item_segments(dataset.items, train_relevant, segment_params["head_min_exposure"],
                             segment_params["torso_min_exposure"])
    return PreparedDataset(name=dataset.name, items=dataset.items, queries=queries, judgments=judgments,
                           scale=dataset.scale, source=dataset.source, segments=segments)
