"""The built-in demo store: a seeded, deterministic product-search dataset with no download.

Items are products of a category ("drill", "faucet", ...) with a brand, a material and a
size; queries are built from the attributes of a target item, sometimes misspelt. Targets
are drawn from a Zipf law over items, so popularity has a long tail; items matching all
the query's attributes are graded relevant (several per query: multi-label), items of the
same category with other attributes are judged non-relevant (graded hard negatives).
Items that end up judged only on valid/test queries, or never, are the cold-start items.
Grades use the Home Depot scale (1 to 3, relevant from 2.5, gain = grade - 1).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import Dataset, RelevanceScale

DEMO_SCALE = RelevanceScale(minimum=1.0, maximum=3.0, threshold=2.5, gain_offset=1.0)

_CATEGORIES = [
    "drill", "faucet", "lamp", "ladder", "paint", "hammer", "shelf", "rug", "fan", "heater",
    "saw", "sink", "toilet", "door", "lock", "hinge", "mower", "hose", "grill", "tile",
    "mirror", "cabinet", "vanity", "chandelier", "sander", "wrench", "router", "planter",
    "mailbox", "doorbell", "thermostat", "dehumidifier",
]
_BRANDS = [
    "acme", "bolt", "cedar", "delta", "everbilt", "fortis", "granite", "harbor", "ironwood",
    "juniper", "kestrel", "lumen", "maple", "northpoint", "orion", "pinecrest", "quarry",
    "ridgeline", "summit", "timber",
]
_MATERIALS = ["steel", "brass", "oak", "plastic", "chrome", "nickel", "bronze", "ceramic",
              "glass", "aluminum", "walnut", "copper"]
_COLORS = ["white", "black", "gray", "red", "blue", "green", "beige", "silver"]
_FACETS = ["material", "color", "brand", "size"]
_SIZES = ["small", "medium", "large", "12 in", "24 in", "36 in", "compact", "heavy duty"]


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    position = int(rng.integers(1, len(word) - 1))
    return word[:position] + word[position + 1:]


def generate_demo_store(n_items: int, n_queries: int, n_categories: int, zipf_exponent: float,
                        max_relevant_per_query: int, negatives_per_query: int, seed: int,
                        typo_rate: float = 0.1) -> Dataset:
    """Build the demo catalogue, queries and graded judgments; same seed, same tables."""
    if n_categories > len(_CATEGORIES):
        raise ValueError(f"demo.n_categories={n_categories} exceeds the {len(_CATEGORIES)} built-in categories")
    rng = np.random.default_rng(seed)
    categories = _CATEGORIES[:n_categories]
    attributes = pd.DataFrame({
        "category": rng.choice(categories, n_items),
        "brand": rng.choice(_BRANDS, n_items),
        "material": rng.choice(_MATERIALS, n_items),
        "color": rng.choice(_COLORS, n_items),
        "size": rng.choice(_SIZES, n_items),
    })
    attributes["item_id"] = [f"demo-{index:06d}" for index in range(n_items)]
    attributes["title"] = (attributes["brand"] + " " + attributes["size"] + " " + attributes["color"] + " "
                           + attributes["material"] + " " + attributes["category"])
    items = attributes[["item_id", "title", "brand", "category"]].copy()

    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf_exponent
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    # Plain arrays, not DataFrame rows: the loop below runs once per query.
    values = {column: attributes[column].to_numpy(dtype=object) for column in ("category", *_FACETS)}
    item_ids = attributes["item_id"].to_numpy(dtype=object)
    by_category = {category: np.flatnonzero(values["category"] == category) for category in categories}

    query_rows, judgment_rows = [], []
    for query_index in range(n_queries):
        target = int(rng.choice(n_items, p=popularity))
        # A query names the category plus one or two attributes: broad queries match many items.
        facets = list(rng.choice(_FACETS, size=int(rng.integers(1, 3)), replace=False))
        words = [str(values[facet][target]) for facet in facets] + [str(values["category"][target])]
        words = [_typo(word, rng) if rng.random() < typo_rate else word for word in words]
        query_id = f"q-{query_index:06d}"
        query_rows.append((query_id, " ".join(words)))

        pool = by_category[values["category"][target]]
        matches = np.ones(len(pool), dtype=bool)
        for facet in facets:
            matches &= values[facet][pool] == values[facet][target]
        relevant = pool[matches]
        if len(relevant) > max_relevant_per_query:
            weights = popularity[relevant]
            keep = rng.choice(len(relevant), max_relevant_per_query - 1, replace=False, p=weights / weights.sum())
            relevant = np.concatenate([[target], relevant[keep][relevant[keep] != target]])
        for item in relevant:
            grade = 3.0 if item == target else float(rng.choice([2.67, 3.0]))
            judgment_rows.append((query_id, item_ids[item], grade))
        others = pool[~matches]
        # Negatives drawn as pandas' DataFrame.sample(random_state=int) draws them.
        picker = np.random.RandomState(int(rng.integers(1 << 31)))
        for item in others[picker.choice(len(others), size=min(negatives_per_query, len(others)), replace=False)]:
            judgment_rows.append((query_id, item_ids[item], float(rng.choice([1.0, 1.33, 1.67, 2.0]))))

    queries = pd.DataFrame(query_rows, columns=["query_id", "text"])
    judgments = pd.DataFrame(judgment_rows, columns=["query_id", "item_id", "relevance"])
    judgments = judgments.drop_duplicates(["query_id", "item_id"]).reset_index(drop=True)
    return Dataset(name="demo", items=items, queries=queries, judgments=judgments, scale=DEMO_SCALE,
                   source=f"demo-store(seed={seed})")
