"""Checks on semantic-ID artifacts (run as Dagster asset checks; plain functions here)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .health import level_utilisations


@dataclass
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)


def every_item_one_sid(table: pd.DataFrame, item_ids: pd.Series) -> CheckOutcome:
    """The table holds each catalogue item exactly once, with a non-empty SID of its stated length."""
    counts = table["item_id"].value_counts()
    duplicated = counts[counts > 1]
    missing = sorted(set(item_ids) - set(table["item_id"]))
    extra = sorted(set(table["item_id"]) - set(item_ids))
    bad_length = table[table["sid"].map(len) != table["length"]]
    empty = table[table["length"] < 1]
    passed = not (len(duplicated) or missing or extra or len(bad_length) or len(empty))
    return CheckOutcome(passed, "every catalogue item has exactly one non-empty SID", {
        "n_items": int(len(table)), "duplicated_items": [str(i) for i in duplicated.index[:5]],
        "missing_items": [str(i) for i in missing[:5]], "unknown_items": [str(i) for i in extra[:5]],
        "length_mismatches": [str(i) for i in bad_length["item_id"][:5]], "empty_sids": int(len(empty))})


def head_collision_free(table: pd.DataFrame) -> CheckOutcome:
    """No head item shares its SID with any other item."""
    head = table[table["segment"] == "head"]
    colliding = head[head["bucket_size"] > 1]
    return CheckOutcome(len(colliding) == 0, "head items have collision-free SIDs", {
        "n_head": int(len(head)), "colliding_head_items": int(len(colliding)),
        "examples": [str(i) for i in colliding["item_id"][:5]]})


def head_longer_than_tail(table: pd.DataFrame) -> CheckOutcome:
    """Mean SID length of head items exceeds that of tail items."""
    lengths = table.groupby("segment")["length"].mean()
    if "head" not in lengths or "tail" not in lengths:
        return CheckOutcome(False, "need both head and tail items to compare SID lengths",
                            {"segments": sorted(lengths.index)})
    head, tail = float(lengths["head"]), float(lengths["tail"])
    return CheckOutcome(head > tail, "mean SID length of head items > tail items",
                        {"mean_length_head": head, "mean_length_tail": tail})


def level_utilisation(health: dict, min_utilisation: float) -> CheckOutcome:
    """Every quantizer level uses at least `min_utilisation` of its codes."""
    per_level = level_utilisations(health)
    low = {level: value for level, value in per_level.items() if value < min_utilisation}
    return CheckOutcome(not low, f"every level uses >= {min_utilisation:.0%} of its codes", {
        "utilisation": {str(level): round(value, 4) for level, value in per_level.items()},
        "below_threshold": {str(level): round(value, 4) for level, value in low.items()},
        "min_utilisation": float(np.float64(min_utilisation))})
