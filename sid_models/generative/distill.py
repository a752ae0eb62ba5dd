"""The SCI teacher: soft next-token targets that order a query's SIDs as the dual towers do.

On Home Depot the towers put a relevant item into the first SID's bucket more often than the
generator does (validation, seed 0: .593 against .495) when each SID is scored by its best item,
max_{i in bucket} f_q(x) · f_i(i). That ordering is a distribution over the SID trie, and it
factorises over decoder positions: given the prefix y_<t, the teacher's probability of the next
token v is

    p_T(v | y_<t, x) = softmax_v( max_{i : sid(i) starts with y_<t v} f_q(x) · f_i(i) / τ ),

over the tokens v that continue y_<t in the catalogue (a level's code, or EOS where an item's SID
ends). `SciTeacher.targets` computes it along each training example's gold prefix for the first
`levels` positions; `generative/train.py` adds the cross-entropy to it to the SFT loss (params
`sft.sci_distillation`). The generator then learns the towers' routing from every example it
reads, the query-like views of cold items included, where the gold SID alone names one bucket.
The idea is DGR's (Li et al., "Distillation Enhanced Generative Retrieval", ACL 2024: a ranking
teacher's order distilled into a generative retriever, inference unchanged); here the teacher is
the system's own towers and the targets are per-token softmaxes over the SID trie.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .vocab import EOS, PAD


@dataclass(frozen=True)
class DistillationConfig:
    weight: float        # λ of the teacher's cross-entropy in the SFT loss; 0 = off
    temperature: float   # τ of the teacher's softmax over the best items' scores
    levels: int          # decoder positions that get a teacher target, from the first

    @classmethod
    def from_params(cls, section: dict) -> "DistillationConfig":
        config = cls(weight=float(section["weight"]), temperature=float(section["temperature"]),
                     levels=int(section["levels"]))
        if config.weight < 0:
            raise ValueError(f"sft.sci_distillation.weight must be >= 0, got {config.weight}")
        if config.temperature <= 0:
            raise ValueError(f"sft.sci_distillation.temperature must be > 0, got {config.temperature}")
        if config.levels < 1:
            raise ValueError(f"sft.sci_distillation.levels must be >= 1, got {config.levels}")
        return config

    @property
    def enabled(self) -> bool:
        return self.weight > 0


class SciTeacher:
    """p_T of the module docstring for the catalogue's SIDs (`item_targets`: SID tokens + EOS + PAD per
    item row) and SCI item vectors f_i (`item_vectors`, same rows)."""

    def __init__(self, item_targets: np.ndarray, item_vectors: np.ndarray, vocab_size: int,
                 config: DistillationConfig):
        if len(item_targets) != len(item_vectors):
            raise ValueError(f"{len(item_targets)} SIDs for {len(item_vectors)} item vectors")
        self.levels = min(config.levels, item_targets.shape[1])
        self.temperature, self.vocab_size = config.temperature, vocab_size
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        # per position t: prefix (t tokens) -> (item rows sorted by token t, segment starts, segment tokens)
        self.children: list[dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
        for position in range(self.levels):
            groups: dict[tuple, list[int]] = {}
            live = ~np.isin(item_targets[:, :position], (EOS, PAD)).any(axis=1)
            for row in np.flatnonzero(live):
                groups.setdefault(tuple(item_targets[row, :position].tolist()), []).append(row)
            level = {}
            for prefix, rows in groups.items():
                rows = np.asarray(rows)
                rows = rows[np.argsort(item_targets[rows, position], kind="stable")]
                tokens, starts = np.unique(item_targets[rows, position], return_index=True)
                level[prefix] = (rows, starts, tokens)
            self.children.append(level)
        # the catalogue in first-token order: one matrix product gives a source every first token's best item
        self.first_order_vectors = torch.from_numpy(self.item_vectors[self.children[0][()][0]])
        self.first_scores: dict[int, np.ndarray] = {}   # source -> best score per first token, / τ
        self.scratch = np.zeros(len(item_targets), dtype=np.float32)   # one row's scores of a subtree's items

    def targets(self, query_vectors: torch.Tensor, gold: torch.Tensor, sources: np.ndarray) -> torch.Tensor:
        """[B, levels, V] teacher distributions along each row's gold tokens `gold` [B, T]; all zeros
        at a position past the row's EOS and for a row whose query vector is zero (dropped).

        `sources` [B] names each row's source text: a source always reads the same vector, so its
        first-position scores (the one step that scores the whole catalogue) are computed once and kept."""
        targets = torch.zeros(len(gold), self.levels, self.vocab_size)
        has_vector = query_vectors.abs().sum(dim=1).gt(0).numpy()
        # a source that comes twice in the batch is scored once
        new = list({int(sources[row]): row for row in np.flatnonzero(has_vector)
                    if int(sources[row]) not in self.first_scores}.values())
        if new:
            scores = (query_vectors[new] @ self.first_order_vectors.T).numpy() / self.temperature
            for row, best in zip(new, np.maximum.reduceat(scores, self.children[0][()][1], axis=1)):
                self.first_scores[int(sources[row])] = best
        vectors, gold = query_vectors.numpy(), gold.numpy()
        for row in np.flatnonzero(has_vector):
            self._fill(targets[row, 0], self.first_scores[int(sources[row])], self.children[0][()][2])
            if self.levels == 1 or gold[row, 0] in (EOS, PAD):
                continue
            # every later position continues the gold first token: score that subtree's items once
            subtree = self.children[1][(int(gold[row, 0]),)][0]
            scores = self.scratch
            scores[subtree] = self.item_vectors[subtree] @ vectors[row] / self.temperature
            for position in range(1, self.levels):
                prefix = tuple(gold[row, :position].tolist())
                if prefix[-1] in (EOS, PAD):
                    break
                rows, starts, tokens = self.children[position][prefix]
                self._fill(targets[row, position], np.maximum.reduceat(scores[rows], starts), tokens)
        return targets

    @staticmethod
    def _fill(target: torch.Tensor, best: np.ndarray, tokens: np.ndarray) -> None:
        """target[tokens] = softmax(best), in place."""
        best = np.exp(best - best.max())
        target[tokens] = torch.from_numpy(best / best.sum())


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_T = (1/N) Σ_i Σ_{t < levels} −Σ_v p_T(v | y_i<t, x_i) log p(v | y_i<t, x_i): the cross-entropy
    from the teacher's targets [N, levels, V] to the model's next-token distributions `logits`
    [N, T, V] (a row or position whose targets are all zero adds nothing)."""
    levels = teacher.shape[1]
    log_probs = torch.log_softmax(logits[:, :levels].float(), dim=-1)
    return -(teacher * log_probs).sum(dim=(1, 2)).mean()
