"""Data stages: `raw_dataset` (load + contract validation), `prepared_dataset` (split and
segments), `segment_stats` (segment sizes and exposure distribution).

- raw_dataset folder: the project's parquet layout (loaders.save_parquet_layout):
  items/queries/judgments.parquet + dataset.json (name, source, scale).
- prepared_dataset folder: PreparedDataset.save(): items/queries/judgments/segments.parquet + meta.json.
- segment_stats folder: segment_stats.json (stats.segment_statistics).
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import tracking
from .loaders import load_dataset, load_parquet_layout, save_parquet_layout
from .schema import PreparedDataset
from .split import prepare
from .stats import segment_statistics

SEGMENT_STATS_FILE = "segment_stats.json"


def raw_dataset(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    """Load the dataset params select; a contract violation raises before anything is written."""
    dataset = load_dataset(params)
    logged = {"dataset": params["dataset"]}
    if params["dataset"]["kind"] == "demo":
        logged["demo"] = params["demo"]
    tracking.log_params(logged)
    save_parquet_layout(dataset, out)
    return {"dataset": dataset.name, "source": dataset.source, "n_items": len(dataset.items),
            "n_queries": len(dataset.queries), "n_judgments": len(dataset.judgments)}


def prepared_dataset(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    tracking.log_params({"split": params["split"], "segments": params["segments"]})
    prepared = prepare(load_parquet_layout(inputs["raw_dataset"]), params["split"], params["segments"])
    prepared.save(out)
    segment_sizes = prepared.segments["segment"].value_counts()
    query_splits = prepared.queries["split"].value_counts()
    return {
        "dataset": prepared.name,
        "n_items": len(prepared.items),
        "n_queries": len(prepared.queries),
        "n_judgments": len(prepared.judgments),
        **{f"n_queries_{split}": int(query_splits.get(split, 0)) for split in ("train", "valid", "test")},
        **{f"n_items_{segment}": int(segment_sizes.get(segment, 0)) for segment in ("head", "torso", "tail", "cold")},
    }


def segment_stats(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    stats = segment_statistics(PreparedDataset.load(inputs["prepared_dataset"]))
    (out / SEGMENT_STATS_FILE).write_text(json.dumps(stats, indent=2))
    return stats
