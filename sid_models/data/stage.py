"""Stage `prepared_dataset`: load the selected dataset, validate it, split it, segment items."""
from __future__ import annotations

from pathlib import Path

from .loaders import load_dataset
from .split import prepare


def run(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    prepared = prepare(load_dataset(params), params["split"], params["segments"])
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
