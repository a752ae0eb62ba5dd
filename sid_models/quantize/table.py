"""The semantic_ids artifact: one SID table per variant plus vocab.json.

Folder layout (the contract with the generative stage):
- one table per variant of params `semantic_ids.variants`: `sids.parquet` for the shipped
  variant, `<variant>_sids.parquet` for the others (`tiger_sids.parquet`); columns item_id, sid
  (list[int], one code per level; the last may be a disambiguation token), length, segment,
  bucket_size (items holding the same SID);
- `vocab.json`: {"levels", "codes_per_level" of the shipped variant, "shipped": its name,
  "variants": {variant: {"levels", "codes_per_level"}}} — token ranges per position;
- `health.json`: `codebook_health` of each variant.
Readers take the variant names from vocab.json; `variant=None` means the shipped one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.schema import SEGMENTS
from .sids import Sids

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


def sid_file(variant: str, shipped: str) -> str:
    return "sids.parquet" if variant == shipped else f"{variant}_sids.parquet"


def save_sids(folder: str | Path, tables: dict[str, pd.DataFrame], codes_per_level: dict[str, list[int]],
              health: dict[str, dict], shipped: str) -> None:
    folder = Path(folder)
    if shipped not in tables or set(tables) != set(codes_per_level):
        raise ValueError(f"need a table and vocab for every variant, the shipped {shipped!r} among them; "
                         f"got tables {sorted(tables)}, vocab {sorted(codes_per_level)}")
    for variant, table in tables.items():
        table.to_parquet(folder / sid_file(variant, shipped), index=False)
    variants = {variant: {"levels": len(ranges), "codes_per_level": [int(r) for r in ranges]}
                for variant, ranges in codes_per_level.items()}
    (folder / VOCAB_FILE).write_text(json.dumps({**variants[shipped], "shipped": shipped, "variants": variants},
                                                indent=2))
    (folder / HEALTH_FILE).write_text(json.dumps(health, indent=2))


def _vocab_file(folder: str | Path) -> dict:
    path = Path(folder) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {VOCAB_FILE} in {folder}: not a semantic_ids artifact")
    vocab = json.loads(path.read_text())
    if "shipped" not in vocab:
        raise ValueError(f"{path} names no shipped variant: written by an older semantic_ids stage, rebuild it")
    return vocab


def sid_variants(folder: str | Path) -> list[str]:
    """The variants a semantic_ids folder holds, the shipped one first."""
    vocab = _vocab_file(folder)
    return [vocab["shipped"], *(variant for variant in vocab["variants"] if variant != vocab["shipped"])]


def resolve_variant(folder: str | Path, variant: str | None) -> str:
    """`variant`, checked against the folder's variants; None: the folder's shipped variant."""
    known = sid_variants(folder)
    if variant is None:
        return known[0]
    if variant not in known:
        raise ValueError(f"unknown SID variant {variant!r}; {folder} holds {known}")
    return variant


def load_sid_table(folder: str | Path, variant: str | None = None) -> pd.DataFrame:
    """The SID table of `variant` (None: the shipped one) from a semantic_ids folder."""
    variant = resolve_variant(folder, variant)
    path = Path(folder) / sid_file(variant, sid_variants(folder)[0])
    if not path.is_file():
        raise FileNotFoundError(f"no {variant} SID table at {path}")
    table = pd.read_parquet(path)
    missing = set(TABLE_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    table["sid"] = table["sid"].map(lambda codes: [int(code) for code in codes])
    return table


def load_vocab(folder: str | Path, variant: str | None = None) -> dict:
    """{"levels": n, "codes_per_level": [...]} of `variant` (None: the shipped one) from vocab.json."""
    return _vocab_file(folder)["variants"][resolve_variant(folder, variant)]


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
