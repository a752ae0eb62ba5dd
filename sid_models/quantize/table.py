"""The semantic_ids artifact: one SID table per variant plus vocab.json.

Folder layout (the contract with the generative stage):
- `sids.parquet` (variant `sarq_acrq`) and `tiger_sids.parquet` (variant `tiger`), columns
  item_id, sid (list[int], one code per level; the last may be a disambiguation token),
  length, segment, bucket_size (items holding the same SID);
- `vocab.json`: {"levels": width of sarq_acrq SIDs, "codes_per_level": [...], and
  "variants": {variant: {"levels", "codes_per_level"}}} — token ranges per position;
- `health.json`: `codebook_health` of each variant.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.schema import SEGMENTS
from .sids import Sids

VARIANT_FILES = {"sarq_acrq": "sids.parquet", "tiger": "tiger_sids.parquet"}
VOCAB_FILE = "vocab.json"
HEALTH_FILE = "health.json"
TABLE_COLUMNS = ("item_id", "sid", "length", "segment", "bucket_size")


def sid_table(item_ids: np.ndarray, sids: Sids, segment: np.ndarray) -> pd.DataFrame:
    if not len(item_ids) == len(sids) == len(segment):
        raise ValueError(f"item_ids ({len(item_ids)}), sids ({len(sids)}) and segment ({len(segment)}) differ in length")
    return pd.DataFrame({
        "item_id": np.asarray(item_ids),
        "sid": sids.as_lists(),
        "length": sids.lengths.astype(np.int64),
        "segment": np.asarray(segment),
        "bucket_size": sids.bucket_sizes().astype(np.int64),
    })


def save_sids(folder: str | Path, tables: dict[str, pd.DataFrame], codes_per_level: dict[str, list[int]],
              health: dict[str, dict]) -> None:
    folder = Path(folder)
    unknown = set(tables) - set(VARIANT_FILES)
    if unknown or set(tables) != set(codes_per_level):
        raise ValueError(f"variants must be among {sorted(VARIANT_FILES)} with vocab for each, got {sorted(tables)}")
    for variant, table in tables.items():
        table.to_parquet(folder / VARIANT_FILES[variant], index=False)
    variants = {variant: {"levels": len(ranges), "codes_per_level": [int(r) for r in ranges]}
                for variant, ranges in codes_per_level.items()}
    (folder / VOCAB_FILE).write_text(json.dumps({**variants["sarq_acrq"], "variants": variants}, indent=2))
    (folder / HEALTH_FILE).write_text(json.dumps(health, indent=2))


def load_sid_table(folder: str | Path, variant: str = "sarq_acrq") -> pd.DataFrame:
    """The SID table of `variant` ("sarq_acrq" or "tiger") from a semantic_ids folder."""
    if variant not in VARIANT_FILES:
        raise ValueError(f"unknown SID variant {variant!r}; expected one of {sorted(VARIANT_FILES)}")
    path = Path(folder) / VARIANT_FILES[variant]
    if not path.is_file():
        raise FileNotFoundError(f"no {variant} SID table at {path}")
    table = pd.read_parquet(path)
    missing = set(TABLE_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    table["sid"] = table["sid"].map(lambda codes: [int(code) for code in codes])
    return table


def load_vocab(folder: str | Path, variant: str = "sarq_acrq") -> dict:
    """{"levels": n, "codes_per_level": [...]} of `variant` from vocab.json."""
    vocab = json.loads((Path(folder) / VOCAB_FILE).read_text())
    if variant not in vocab["variants"]:
        raise ValueError(f"vocab.json in {folder} has no variant {variant!r}; it has {sorted(vocab['variants'])}")
    return vocab["variants"][variant]


def segment_summary(table: pd.DataFrame) -> list[dict]:
    """Per segment (head, torso, tail, cold, then all): items, mean SID length, share of items
    whose SID is shared (collision_rate) and the largest bucket any of them sits in."""
    rows = []
    for segment in (*SEGMENTS, "all"):
        part = table if segment == "all" else table[table["segment"] == segment]
        if len(part):
            rows.append({"segment": segment, "n_items": int(len(part)), "mean_length": float(part["length"].mean()),
                         "collision_rate": float((part["bucket_size"] > 1).mean()),
                         "max_bucket": int(part["bucket_size"].max())})
    return rows
