"""Segment statistics of a prepared dataset: segment sizes, the exposure distribution, and
where the relevant evaluation pairs fall (an item never seen in training is cold)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import SEGMENTS, SPLITS, PreparedDataset

# Upper edges of the exposure histogram bins; the last bin is open-ended.
EXPOSURE_BINS = (0, 1, 2, 3, 4, 5, 10, 20, 50)


def segment_statistics(prepared: PreparedDataset) -> dict:
    """Flat dict of counts and shares, JSON-able (DVC metrics, Dagster metadata, MLflow metrics)."""
    segments = prepared.segments
    sizes = segments["segment"].value_counts()
    n_items = len(segments)
    stats: dict = {"n_items": n_items}
    for segment in SEGMENTS:
        stats[f"n_items_{segment}"] = int(sizes.get(segment, 0))
        stats[f"share_items_{segment}"] = round(int(sizes.get(segment, 0)) / n_items, 6)
    exposure = segments["exposure"].to_numpy()
    seen = exposure[exposure > 0]
    stats.update({
        "exposure_total": int(exposure.sum()),
        "exposure_max": int(exposure.max()),
        "exposure_mean_seen": round(float(seen.mean()), 6) if len(seen) else 0.0,
        "exposure_p50_seen": float(np.percentile(seen, 50)) if len(seen) else 0.0,
        "exposure_p90_seen": float(np.percentile(seen, 90)) if len(seen) else 0.0,
        "exposure_p99_seen": float(np.percentile(seen, 99)) if len(seen) else 0.0,
        "share_exposure_head": round(float(exposure[segments["segment"].eq("head").to_numpy()].sum()
                                           / max(exposure.sum(), 1)), 6),
    })
    stats["exposure_histogram"] = exposure_histogram(exposure)
    item_segment = segments.set_index("item_id")["segment"]
    for split in SPLITS:
        relevant = prepared.relevant(split)
        in_segment = relevant["item_id"].map(item_segment).value_counts()
        stats[f"n_relevant_{split}"] = len(relevant)
        for segment in SEGMENTS:
            stats[f"share_relevant_{split}_{segment}"] = round(int(in_segment.get(segment, 0)) / max(len(relevant), 1), 6)
        stats[f"share_relevant_{split}_seen"] = round(1.0 - stats[f"share_relevant_{split}_cold"], 6)
        per_query = relevant.groupby("query_id").size()
        stats[f"n_queries_{split}_with_relevant"] = int(len(per_query))
        stats[f"n_queries_{split}_multi"] = int((per_query >= 2).sum())
    return stats


def exposure_histogram(exposure: np.ndarray) -> dict[str, int]:
    """Item counts per exposure bin: "0", "1", ..., "5-9", ..., "50+"."""
    histogram = {}
    edges = list(EXPOSURE_BINS)
    for low, high in zip(edges, edges[1:] + [None]):
        if high is None:
            label, mask = f"{low}+", exposure >= low
        elif high == low + 1:
            label, mask = str(low), exposure == low
        else:
            label, mask = f"{low}-{high - 1}", (exposure >= low) & (exposure < high)
        histogram[label] = int(mask.sum())
    return histogram


def recount_exposure(prepared: PreparedDataset) -> pd.Series:
    """Exposure recomputed from the judgments: relevant pairs of training queries per item."""
    train = prepared.relevant("train")
    return prepared.items["item_id"].map(train.groupby("item_id").size()).fillna(0).astype(np.int64)
