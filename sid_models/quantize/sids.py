"""Semantic IDs as arrays, and the fixed-length (TIGER-style) SID policy.

A SID policy turns full quantizer codes [n, L] into the SIDs the generative model decodes.
Two policies plug into the semantic_ids stage: `Sarq` (sarq.py, adaptive length) and
`CollisionDigit` (here, fixed length plus a collision-breaking last digit, the TIGER baseline).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ABSENT = -1


@dataclass
class Sids:
    """`tokens` [n, width] holds each item's SID left-aligned, `ABSENT` past `lengths[i]`.

    `codes_per_level[p]` is the token range of position p (its last entry may be a
    disambiguation token range rather than a codebook).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    codes_per_level: list[int]

    def __post_init__(self):
        n, width = self.tokens.shape
        if self.lengths.shape != (n,) or self.lengths.min(initial=1) < 1 or self.lengths.max(initial=0) > width:
            raise ValueError(f"lengths must be {n} values in [1, {width}]")
        if len(self.codes_per_level) != width:
            raise ValueError(f"codes_per_level has {len(self.codes_per_level)} entries for SIDs of width {width}")
        positions = np.arange(width)[None, :]
        inside = positions < self.lengths[:, None]
        if np.any(self.tokens[~inside] != ABSENT) or np.any(self.tokens[inside] < 0):
            raise ValueError("tokens must be >= 0 inside each SID and ABSENT (-1) after it")
        too_big = self.tokens >= np.asarray(self.codes_per_level)[None, :]
        if np.any(too_big):
            row, position = np.argwhere(too_big)[0]
            raise ValueError(f"token {self.tokens[row, position]} at position {position} of item row {row} "
                             f"exceeds its range {self.codes_per_level[position]}")

    def __len__(self) -> int:
        return len(self.lengths)

    def as_lists(self) -> list[list[int]]:
        return [row[:length].tolist() for row, length in zip(self.tokens, self.lengths)]

    def groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(group id per item, items per group): items with the same SID share a group."""
        _, inverse, counts = np.unique(self.tokens, axis=0, return_inverse=True, return_counts=True)
        return inverse.reshape(-1), counts

    def bucket_sizes(self) -> np.ndarray:
        """Number of items holding each item's SID (1 = unique)."""
        inverse, counts = self.groups()
        return counts[inverse]


def truncate(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Full codes [n, L] cut to per-item lengths, ABSENT after the cut."""
    positions = np.arange(codes.shape[1])[None, :]
    return np.where(positions < lengths[:, None], codes, ABSENT).astype(np.int64)


def duplicate_rank(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... among rows of `keys` [n, w] that are equal, in row order."""
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(order)) - group_start
    return rank


def rank_digits(rank: np.ndarray, base: int) -> tuple[np.ndarray, list[int]]:
    """Ranks written with the fewest base-`base` digits that hold the largest, most significant
    first: (digits [n, D], the token range of each digit position).

    One digit (range max rank + 1) while every rank is below `base`, as in TIGER. A 10M-item
    catalogue has full codes shared by thousands of items, and a single digit that wide would
    make the decoder's vocabulary and the trie that wide too; D digits keep every position
    within `base` tokens.
    """
    largest = int(rank.max()) if len(rank) else 0
    n_digits = 1
    while base ** n_digits <= largest:
        n_digits += 1
    powers = base ** np.arange(n_digits - 1, -1, -1, dtype=np.int64)
    digits = (rank[:, None] // powers[None, :]) % base
    ranges = [base] * n_digits
    ranges[0] = largest // int(powers[0]) + 1
    return digits.astype(np.int64), ranges


class CollisionDigit:
    """TIGER-style policy: every item keeps all L levels and gets one more digit, its rank among
    the items with the same full code (0 for an item whose code is unique); a rank past the
    disambiguation base is written in more digits (`rank_digits`)."""

    def __init__(self, disambiguation_base: int):
        self.disambiguation_base = disambiguation_base

    def fitted(self) -> dict:
        return {}

    def assign(self, codes: np.ndarray, codes_per_level: list[int], exposure: np.ndarray,
               head: np.ndarray) -> Sids:
        digits, ranges = rank_digits(duplicate_rank(codes), self.disambiguation_base)
        tokens = np.concatenate([codes.astype(np.int64), digits], axis=1)
        lengths = np.full(len(codes), tokens.shape[1], dtype=np.int64)
        return Sids(tokens, lengths, [*codes_per_level, *ranges])
