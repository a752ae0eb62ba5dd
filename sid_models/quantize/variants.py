"""The SID variants: rows of params `semantic_ids.variants`, built from the components here.

A variant is full codes (`CODES`: one code per quantiser level for every item) turned into
SIDs by a policy (`POLICIES`). The semantic_ids stage builds every row the same way, so a
new variant is one row in params; a new kind of codes or policy is one function here and its
entry in the table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .acrq import Catalogue
from .rkmeans import ResidualKMeans, ResidualKMeansConfig
from .sarq import Sarq, SarqConfig
from .sids import CollisionDigit

CODES_FILE = "codes.npy"
CODEBOOKS_FILE = "codebooks.npz"

FullCodes = tuple[np.ndarray, list[int]]          # (codes [n_items, levels], codes per level)


def acrq_codes(catalogue: Catalogue, params: dict, row: dict, inputs: dict[str, Path]) -> FullCodes:
    """The ACRQ codes of every item (stage acrq_codes) over the frozen stage-A codebooks."""
    codes = np.load(inputs["acrq_codes"] / CODES_FILE)
    if codes.shape[0] != len(catalogue.item_view):
        raise ValueError(f"{inputs['acrq_codes'] / CODES_FILE} has {codes.shape[0]} rows, "
                         f"catalogue has {len(catalogue.item_view)}")
    return codes, ResidualKMeans.load(inputs["acrq_codebooks"] / CODEBOOKS_FILE).codes_per_level


def residual_kmeans_codes(catalogue: Catalogue, params: dict, row: dict, inputs: dict[str, Path]) -> FullCodes:
    """Plain residual k-means of the item view over all items (TIGER's quantiser): the
    quantize section with the row's `levels` and `codes_per_level`."""
    config = ResidualKMeansConfig.from_params(
        {**params["quantize"], "levels": row["levels"], "codes_per_level": row["codes_per_level"]}, params["seed"])
    quantizer = ResidualKMeans(config)
    return quantizer.fit(catalogue.item_view), quantizer.codes_per_level


# codes kind -> (builder, the row keys it reads besides codes and policy)
CODES: dict[str, tuple[Callable[[Catalogue, dict, dict, dict[str, Path]], FullCodes], tuple[str, ...]]] = {
    "acrq": (acrq_codes, ()),
    "residual_kmeans": (residual_kmeans_codes, ("levels", "codes_per_level")),
}
POLICIES: dict[str, Callable[[dict], object]] = {
    "sarq": lambda params: Sarq(SarqConfig.from_params(params["sarq"]), params["semantic_ids"]["disambiguation_base"]),
    "collision_digit": lambda params: CollisionDigit(params["semantic_ids"]["disambiguation_base"]),
}


def variant_rows(params: dict) -> dict[str, dict]:
    """params `semantic_ids.variants`, every row checked (a row set to null is switched off);
    the shipped variant among them."""
    section = params["semantic_ids"]
    if not isinstance(section["variants"], dict):
        raise ValueError("semantic_ids.variants must map variant names to rows {codes: ..., policy: ...}")
    rows = {name: row for name, row in section["variants"].items() if row is not None}    # null: off
    for name, row in rows.items():
        if row.get("codes") not in CODES:
            raise ValueError(f"semantic_ids.variants.{name}: codes {row.get('codes')!r} is not one of {sorted(CODES)}")
        if row.get("policy") not in POLICIES:
            raise ValueError(f"semantic_ids.variants.{name}: policy {row.get('policy')!r} is not one of "
                             f"{sorted(POLICIES)}")
        expected = {"codes", "policy", *CODES[row["codes"]][1]}
        if set(row) != expected:
            raise ValueError(f"semantic_ids.variants.{name}: a {row['codes']} row has keys {sorted(expected)}, "
                             f"got {sorted(row)}")
    if section["shipped"] not in rows:
        raise ValueError(f"semantic_ids.shipped {section['shipped']!r} is not among semantic_ids.variants {list(rows)}")
    return rows


def build_variant(name: str, catalogue: Catalogue, params: dict, inputs: dict[str, Path]) -> tuple[FullCodes, object]:
    """(full codes, SID policy) of variant `name`."""
    row = variant_rows(params)[name]
    builder, _ = CODES[row["codes"]]
    return builder(catalogue, params, row, inputs), POLICIES[row["policy"]](params)
