"""The SCI prior of the SID decoder: dense retrieval's score inside the generator's logits.

Why: the small seq2seq model learns which SID a query names from ~9.5k training queries and one
indexing example per item view, so its first SID holds a relevant item for only ~30 % of Home
Depot's validation queries, while the SCI towers, trained on the same data over MiniLM, already
score every item. The prior hands the decoder that score as a starting point it corrects.

Token vectors: every SID token t (a code at its level) gets a vector v_t in the SCI item space,
fitted so that an item's SID tokens sum to its item-view vector,

    V = argmin_V  Σ_i || f_i(i) − Σ_{t ∈ SID(i)} v_t ||²,

by block coordinate descent over the SID positions (each position's vectors become the mean
residual of its items given the other positions; `sweeps` passes; the first pass is greedy
residual quantisation). Special tokens (PAD, BOS, EOS) keep v = 0.

The model adds s · f_q(x) · v_t to the logit of every token t (s a learned scalar, initialised to
`scale`; `model.py`), so a SID's summed log-probability carries s · f_q(x) · Σ_t v_t ≈
s · f_q(x) · f_i(item), minus each level's normaliser, before the model has learnt anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .vocab import N_SPECIAL


@dataclass(frozen=True)
class PriorConfig:
    """Params `generative.sid_prior`: on/off, the initial scale s, the fitting passes."""

    enabled: bool
    scale: float
    sweeps: int

    @classmethod
    def from_params(cls, section: dict) -> "PriorConfig":
        config = cls(enabled=bool(section["enabled"]), scale=float(section["scale"]), sweeps=int(section["sweeps"]))
        if config.sweeps < 1 or config.scale <= 0:
            raise ValueError(f"generative.sid_prior needs sweeps >= 1 and scale > 0, got {section}")
        return config


def fit_token_vectors(item_targets: np.ndarray, item_vectors: np.ndarray, vocab_size: int, sweeps: int) -> np.ndarray:
    """[vocab_size, d] token vectors V (module docstring) from the items' decoder targets
    [n_items, T] (SID tokens, EOS, PAD) and their SCI item-view vectors [n_items, d]."""
    targets = np.asarray(item_targets, dtype=np.int64)
    vectors = np.asarray(item_vectors, dtype=np.float64)
    if targets.ndim != 2 or vectors.ndim != 2 or len(targets) != len(vectors):
        raise ValueError(f"token vectors need one target row per item vector, got {targets.shape} and {vectors.shape}")
    if targets.max(initial=0) >= vocab_size:
        raise ValueError(f"item targets hold token {int(targets.max())}, the vocabulary has {vocab_size}")
    is_code = targets >= N_SPECIAL
    token_vectors = np.zeros((vocab_size, vectors.shape[1]))
    fitted = np.zeros_like(vectors)             # Σ_t v_t of every item under the current V
    for _ in range(sweeps):
        for position in range(targets.shape[1]):
            rows = np.flatnonzero(is_code[:, position])
            if not len(rows):
                continue
            tokens = targets[rows, position]
            fitted[rows] -= token_vectors[tokens]
            residual = vectors[rows] - fitted[rows]
            counts = np.bincount(tokens, minlength=vocab_size)
            sums = np.zeros_like(token_vectors)
            np.add.at(sums, tokens, residual)
            present = counts > 0
            token_vectors[present] = sums[present] / counts[present, None]
            fitted[rows] += token_vectors[tokens]
    return token_vectors.astype(np.float32)


def set_sid_prior(model, token_vectors: np.ndarray, scale: float) -> None:
    """Load the token vectors and the initial scale into a sid_prior model."""
    if not model.config.sid_prior:
        raise ValueError("the model was built without sid_prior")
    if tuple(token_vectors.shape) != tuple(model.sid_vectors.shape):
        raise ValueError(f"token vectors {tuple(token_vectors.shape)}, the model holds {tuple(model.sid_vectors.shape)}")
    with torch.no_grad():
        model.sid_vectors.copy_(torch.from_numpy(np.asarray(token_vectors, dtype=np.float32)))
        model.sid_prior_scale.fill_(scale)
