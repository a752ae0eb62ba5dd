"""Stage `text_embeddings`: base sentence vectors (params text.model_name) of every item text and query text.

Artifact: `items.npy` float32 [n_items, width] in items.parquet row order (text =
`Dataset.item_text()`: title | brand | category), `queries.npy` float32 [n_queries, width] in
queries.parquet row order, both L2-normalised; `meta.json` with the model id and shapes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.schema import PreparedDataset
from .encoder import TextEncoder


def run(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    prepared = PreparedDataset.load(inputs["prepared_dataset"])
    encoder = TextEncoder.from_params(params["text"])
    items = encoder.encode(prepared.item_text().tolist(), desc="items")
    queries = encoder.encode(prepared.queries["text"].tolist(), desc="queries")
    np.save(out / "items.npy", items)
    np.save(out / "queries.npy", queries)
    (out / "meta.json").write_text(json.dumps({
        "model_id": encoder.model_id, "dim": int(items.shape[1]),
        "n_items": int(items.shape[0]), "n_queries": int(queries.shape[0]),
    }, indent=2))
    return {
        "model_id": encoder.model_id,
        "n_items": int(items.shape[0]),
        "n_queries": int(queries.shape[0]),
        "texts_encoded": encoder.texts_encoded,
        "texts_from_cache": int(items.shape[0] + queries.shape[0] - encoder.texts_encoded),
    }


def load_embeddings(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(items [n_items, width], queries [n_queries, width]) from a text_embeddings artifact folder."""
    folder = Path(folder)
    return np.load(folder / "items.npy"), np.load(folder / "queries.npy")
