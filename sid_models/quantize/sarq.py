"""SARQ: sequential adaptive-length semantic IDs over a residual code tree.

The full codes [n, L] define a prefix tree: a node at depth d is a code prefix of length d.
Every node n has
- mass `M(n) = sum over its items of (exposure_i + alpha)` (training exposure, additively
  smoothed by `alpha` so cold items weigh something), and
- path entropy `H(n) = -sum_c p(c|n) log p(c|n)`, `p(c|n) = M(c) / M(n)` over its children c
  (nats; 0 at depth L, which has no children).

Stopping rule: every item starts at depth 1 (its coarse cell) and its SID is extended to the
next level while its node is *contended*: it holds more than one item, `M(n) > tau` and
`H(n) > h_min`. An item stops at the first uncontended node on its path.

Head items must end collision-free: a head item that stopped in a node shared with other
items goes on down its path until its node holds it alone; a head item still sharing its
full code at depth L gets a disambiguation suffix: its rank among the head items of that
leaf, one token while ranks stay below `semantic_ids.disambiguation_base`, more digits
past it (`sids.rank_digits`). The suffix also sets it apart from any non-head item there. Non-head items that share a
node form a leaf bucket, resolved at retrieval time by the SCI score.

`tau` is given, or solved from a target mean SID length (disambiguation tokens included; they
do not depend on `tau`): the mean length is a non-increasing
step function of `tau` that changes only at node masses, so bisection over the sorted
distinct node masses finds the smallest `tau` whose mean length is at most the target. The
head items' floor depends on the catalogue (the larger its head, the longer the shortest
reachable mean): a target below it gives the shortest SIDs the floor allows, with a warning,
so one default serves catalogues of any head share (the achieved mean is in the SID health).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .sids import ABSENT, Sids, duplicate_rank, rank_digits, truncate

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SarqConfig:
    """`tau`: mass threshold, or None to solve it from `target_mean_length`."""

    tau: float | None
    target_mean_length: float | None
    h_min: float
    mass_smoothing: float

    @classmethod
    def from_params(cls, section: dict) -> "SarqConfig":
        tau = section.get("tau")
        target = section.get("target_mean_length")
        if tau is None and target is None:
            raise ValueError("sarq needs tau or target_mean_length in params.yaml")
        return cls(tau=None if tau is None else float(tau), target_mean_length=None if target is None else float(target),
                   h_min=float(section["h_min"]), mass_smoothing=float(section["mass_smoothing"]))


@dataclass
class PrefixTree:
    """Per depth d (index d-1): each item's node, and each node's item count, mass and entropy."""

    node: list[np.ndarray]
    count: list[np.ndarray]
    mass: list[np.ndarray]
    entropy: list[np.ndarray]

    @property
    def depth(self) -> int:
        return len(self.node)

    @classmethod
    def build(cls, codes: np.ndarray, item_mass: np.ndarray) -> "PrefixTree":
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.min(initial=0) < 0:
            raise ValueError(f"codes must be a non-negative [n, L] array, got shape {codes.shape}")
        if item_mass.shape != (len(codes),) or np.any(item_mass < 0):
            raise ValueError(f"item_mass must be {len(codes)} non-negative values")
        nodes, counts, masses, parents = [], [], [], []
        parent = np.zeros(len(codes), dtype=np.int64)
        for depth in range(codes.shape[1]):
            key = parent * (int(codes[:, depth].max()) + 1) + codes[:, depth]
            unique_keys, node = np.unique(key, return_inverse=True)
            node = node.reshape(-1)
            nodes.append(node)
            counts.append(np.bincount(node, minlength=len(unique_keys)))
            masses.append(np.bincount(node, weights=item_mass, minlength=len(unique_keys)))
            parent_of_node = np.zeros(len(unique_keys), dtype=np.int64)
            parent_of_node[node] = parent
            parents.append(parent_of_node)
            parent = node
        entropies = []
        for depth in range(codes.shape[1]):
            if depth + 1 == codes.shape[1]:
                entropies.append(np.zeros(len(masses[depth])))
                continue
            child_mass, child_parent = masses[depth + 1], parents[depth + 1]
            p = child_mass / np.maximum(masses[depth][child_parent], np.finfo(float).tiny)
            terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
            entropies.append(np.bincount(child_parent, weights=terms, minlength=len(masses[depth])))
        return cls(nodes, counts, masses, entropies)

    def rule_lengths(self, tau: float, h_min: float) -> np.ndarray:
        """Depth at which each item meets its first uncontended node (the stopping rule)."""
        n = len(self.node[0])
        lengths = np.full(n, self.depth, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        for depth in range(self.depth - 1):
            contended = (self.count[depth] > 1) & (self.mass[depth] > tau) & (self.entropy[depth] > h_min)
            stop = alive & ~contended[self.node[depth]]
            lengths[stop] = depth + 1
            alive &= ~stop
        return lengths

    def unique_lengths(self) -> np.ndarray:
        """Depth at which each item's node first holds it alone (L if it never does)."""
        n = len(self.node[0])
        lengths = np.full(n, self.depth, dtype=np.int64)
        found = np.zeros(n, dtype=bool)
        for depth in range(self.depth):
            alone = ~found & (self.count[depth][self.node[depth]] == 1)
            lengths[alone] = depth + 1
            found |= alone
        return lengths

    def candidate_taus(self) -> np.ndarray:
        """The distinct node masses plus 0: the only places the stopping rule can change."""
        return np.unique(np.concatenate([[0.0], *self.mass[:-1]]))


class Sarq:
    """SID policy: adaptive lengths by the stopping rule, head items made collision-free."""

    def __init__(self, config: SarqConfig, disambiguation_base: int):
        self.config, self.disambiguation_base = config, disambiguation_base
        self.tau: float | None = None

    def fitted(self) -> dict:
        """What the last assign() solved for (the semantic_ids stage's metadata)."""
        return {"tau": self.tau}

    def assign(self, codes: np.ndarray, codes_per_level: list[int], exposure: np.ndarray,
               head: np.ndarray) -> Sids:
        codes = np.asarray(codes, dtype=np.int64)
        exposure = np.asarray(exposure, dtype=np.float64)
        head = np.asarray(head, dtype=bool)
        if exposure.shape != (len(codes),) or head.shape != (len(codes),):
            raise ValueError(f"exposure and head must have one entry per item ({len(codes)}), "
                             f"got {exposure.shape} and {head.shape}")
        if np.any(exposure < 0):
            raise ValueError(f"exposure must be >= 0, got minimum {exposure.min()}")
        tree = PrefixTree.build(codes, exposure + self.config.mass_smoothing)
        floor = np.where(head, tree.unique_lengths(), 1)
        # a head item sharing its full code never ends alone, so it always reaches depth L
        needs_token = head & (tree.count[-1][tree.node[-1]] > 1)
        digits, ranges = rank_digits(duplicate_rank(codes[needs_token]), self.disambiguation_base)
        self.tau = (self.config.tau if self.config.tau is not None
                    else self._solve_tau(tree, floor, float(needs_token.mean()) * digits.shape[1]))
        lengths = np.maximum(tree.rule_lengths(self.tau, self.config.h_min), floor)
        return self._with_disambiguation(truncate(codes, lengths), codes_per_level, lengths, needs_token,
                                         digits, ranges)

    def _solve_tau(self, tree: PrefixTree, floor: np.ndarray, token_share: float) -> float:
        target = self.config.target_mean_length
        candidates = tree.candidate_taus()

        def mean_length(tau: float) -> float:
            return float(np.maximum(tree.rule_lengths(tau, self.config.h_min), floor).mean()) + token_share

        shortest, longest = mean_length(candidates[-1]), mean_length(candidates[0])
        if target < shortest:
            LOGGER.warning("sarq.target_mean_length %s is below the shortest mean length this catalogue reaches "
                           "(%.3f: head items must stay unique); SARQ uses the shortest", target, shortest)
            return float(candidates[-1])
        if longest <= target:
            return float(candidates[0])
        low, high = 0, len(candidates) - 1  # mean_length(candidates[low]) > target >= mean_length(candidates[high])
        while high - low > 1:
            middle = (low + high) // 2
            if mean_length(candidates[middle]) > target:
                low = middle
            else:
                high = middle
        return float(candidates[high])

    @staticmethod
    def _with_disambiguation(tokens: np.ndarray, codes_per_level: list[int], lengths: np.ndarray,
                             needs_token: np.ndarray, digits: np.ndarray, ranges: list[int]) -> Sids:
        if not needs_token.any():
            return Sids(tokens, lengths, list(codes_per_level))
        suffix = np.full((len(tokens), digits.shape[1]), ABSENT, dtype=np.int64)
        suffix[needs_token] = digits
        return Sids(np.concatenate([tokens, suffix], axis=1), lengths + digits.shape[1] * needs_token,
                    [*codes_per_level, *ranges])
