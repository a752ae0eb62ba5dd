"""Codebook health: the one function every stage, check and benchmark reports."""
from __future__ import annotations

import numpy as np

from .sids import Sids


def codebook_health(sids: Sids, quantizer_levels: int | None = None) -> dict:
    """Per-level utilisation and perplexity, collision rate, items per SID.

    - `level{l}_utilisation`: distinct codes used at level l / codes available there,
      over the items whose SID reaches level l;
    - `level{l}_perplexity`: exp of the entropy of the code usage at level l (K when uniform);
    - `collision_rate`: fraction of items whose full SID is shared with another item;
    - `max_bucket`, `mean_bucket`: items per distinct SID; `bucket_histogram`: number of
      SIDs holding 1, 2, 3-4, 5-8, ... items;
    - `mean_length`, `n_items`, `n_sids`.
    Levels past `quantizer_levels` (a disambiguation digit) count in the collision figures
    but get no utilisation figures: they are not a codebook.
    """
    n_positions = sids.tokens.shape[1] if quantizer_levels is None else quantizer_levels
    health: dict = {"n_items": int(len(sids)), "mean_length": float(sids.lengths.mean())}
    for position in range(n_positions):
        used = sids.tokens[:, position]
        used = used[used >= 0]
        counts = np.bincount(used, minlength=sids.codes_per_level[position]) if len(used) else np.zeros(1)
        probabilities = counts[counts > 0] / max(counts.sum(), 1)
        health[f"level{position + 1}_utilisation"] = float((counts > 0).sum() / sids.codes_per_level[position])
        health[f"level{position + 1}_perplexity"] = float(np.exp(-(probabilities * np.log(probabilities)).sum()))
    inverse, counts = sids.groups()
    shared = counts[inverse] > 1
    health.update({
        "n_sids": int(len(counts)),
        "collision_rate": float(shared.mean()),
        "max_bucket": int(counts.max()),
        "mean_bucket": float(counts.mean()),
        "bucket_histogram": _power_of_two_histogram(counts),
    })
    return health


def level_utilisations(health: dict) -> dict[int, float]:
    """{level: utilisation} read back from a `codebook_health` result."""
    return {int(key[len("level"):-len("_utilisation")]): value for key, value in health.items()
            if key.startswith("level") and key.endswith("_utilisation")}


def _power_of_two_histogram(sizes: np.ndarray) -> dict[str, int]:
    histogram: dict[str, int] = {}
    upper = 1
    while True:
        lower = upper // 2 + 1
        count = int(((sizes >= lower) & (sizes <= upper)).sum())
        if count:
            histogram[str(upper) if lower == upper else f"{lower}-{upper}"] = count
        if upper >= sizes.max():
            return histogram
        upper *= 2
