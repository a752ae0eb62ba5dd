"""SCI towers with a lexical part (`sci.tower.kind: mlp_lexical`): a semantic MLP tower and a
learned dense embedding of the text's tf-idf terms, one vector.

Each tower maps a text x to a unit vector of out_dim + lexical_dim dimensions:

    s(x) = the MLP tower of towers.py over x's MiniLM vector           (unit, out_dim)
    l(x) = normalize(E^T · t(x))                                       (unit, lexical_dim)
    f(x) = [√(1 − α) · s(x) ; √α · l(x)]                               (unit)

with t(x) the L2-normalised tf-idf vector of x's stemmed words and character trigrams
(`lexical/terms.py`, vocabulary fitted on the catalogue) and α = `lexical_share`. So
f_q(q) · f_i(i) = (1 − α) s_q · s_i + α l_q · l_i: one inner product, searched by the same
FAISS indexes, that mixes MiniLM semantics with what BM25 sees and MiniLM misses on product
search: model numbers, sizes, brands, misspellings.

Why this shape (Home Depot validation split): MiniLM zero-shot reaches Recall@10 .355 and stemmed
BM25 .449; the exact tf-idf cosine of words and trigrams added to the MiniLM cosine reaches .474,
and the same with the tf-idf vectors replaced by a 1,024-d Gaussian random projection .464. E
starts as that projection (entries N(0, 1/lexical_dim), seeded, the same in both towers, so at
initialisation f_q = f_i and l_q · l_i ≈ the tf-idf cosine, Johnson–Lindenstrauss). What of it
trains is `lexical_learning`: `embedding`, each tower its own copy of E (vocabulary × lexical_dim
parameters); `term_weights`, E stays fixed and each tower learns one log-multiplier per term on
its tf-idf weight,

    t'(x)_t = t(x)_t · exp(w_t),    w = 0 at initialisation,

so the query tower learns which terms of a query matter and the item tower which terms of a
title (a learned idf per tower); `none`, E stays the random projection and only the semantic MLP
trains. Either learned part lets the towers drift apart, as SCI expects. Chosen on validation
(seed 0, λ_swap 0, best epoch's Recall@10): embedding at α = .5 / .6 / .7: .494 / .502 / .501;
term_weights at α = .6 / .7: .494 / .492; none at α = .5: .492. The embedding trains in about
ten minutes on this 2-core CPU (its dense Adam update over two vocabulary × 1,024 tables is most
of it), the other two in two.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lexical.terms import VOCABULARY_FILE, TermVectoriser
from .towers import CONFIG_FILE, WEIGHTS_FILE, Tower, TowerConfig

ENCODE_BATCH = 8192
LEXICAL_LEARNING = ("embedding", "term_weights", "none")


@dataclass
class LexicalInputs:
    """What a lexical tower reads of n texts: MiniLM sentence vectors and tf-idf term vectors."""

    vectors: np.ndarray      # float32 [n, in_dim]
    terms: sp.csr_matrix     # float32 [n, vocabulary], rows L2-normalised

    def __post_init__(self):
        if len(self.vectors) != self.terms.shape[0]:
            raise ValueError(f"{len(self.vectors)} sentence vectors but {self.terms.shape[0]} term vectors")

    def __len__(self) -> int:
        return len(self.vectors)

    def subset(self, rows: np.ndarray) -> "LexicalInputs":
        rows = np.asarray(rows, dtype=np.int64)
        return LexicalInputs(self.vectors[rows], self.terms[rows])

    def stacked(self, other: "LexicalInputs") -> "LexicalInputs":
        """The rows of self, then those of `other`."""
        return LexicalInputs(np.concatenate([self.vectors, other.vectors]), sp.vstack([self.terms, other.terms]).tocsr())

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(vectors [B, in_dim], term ids, bag offsets [B], term weights) of texts `rows`, as
        nn.EmbeddingBag takes them."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        terms = self.terms[rows]
        return (torch.from_numpy(np.ascontiguousarray(self.vectors[rows], dtype=np.float32)),
                torch.from_numpy(terms.indices.astype(np.int64)), torch.from_numpy(terms.indptr[:-1].astype(np.int64)),
                torch.from_numpy(terms.data.astype(np.float32)))


@dataclass
class LexicalTowerConfig(TowerConfig):
    """params sci.tower.kinds.mlp_lexical: the semantic MLP tower's settings (TowerConfig), with
    vocabulary_size the catalogue's term count."""
    vocabulary_size: int
    lexical_dim: int
    lexical_share: float           # α: the lexical part's weight in the inner product
    lexical_learning: str          # what of the lexical part trains: embedding | term_weights | none
    stemmer: str | None
    stopwords: str | None

    def __post_init__(self):
        if self.lexical_learning not in LEXICAL_LEARNING:
            raise ValueError(f"sci.tower.kinds.mlp_lexical.lexical_learning must be one of {list(LEXICAL_LEARNING)}, "
                             f"got {self.lexical_learning!r}")
        if not 0 < self.lexical_share < 1:
            raise ValueError(f"sci.tower.kinds.mlp_lexical.lexical_share must be in (0, 1), got {self.lexical_share}")
        if self.lexical_dim < 1 or self.vocabulary_size < 1:
            raise ValueError(f"lexical towers need lexical_dim >= 1 and a non-empty vocabulary, got "
                             f"{self.lexical_dim} and {self.vocabulary_size}")

    @property
    def dim(self) -> int:
        return self.out_dim + self.lexical_dim


class LexicalTower(nn.Module):
    def __init__(self, config: LexicalTowerConfig, projection: torch.Tensor, embedding: torch.Tensor):
        super().__init__()
        self.semantic = Tower(config, projection)
        self.lexical = nn.EmbeddingBag(config.vocabulary_size, config.lexical_dim, mode="sum")
        with torch.no_grad():
            self.lexical.weight.copy_(embedding)
        self.lexical.weight.requires_grad_(config.lexical_learning == "embedding")
        # log-multipliers of the terms' tf-idf weights, 0 = plain tf-idf (trained with term_weights)
        self.term_log_weight = nn.Parameter(torch.zeros(config.vocabulary_size),
                                            requires_grad=config.lexical_learning == "term_weights")
        self.semantic_scale, self.lexical_scale = math.sqrt(1 - config.lexical_share), math.sqrt(config.lexical_share)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        vectors, term_ids, offsets, weights = inputs
        weights = weights * torch.exp(self.term_log_weight[term_ids])
        lexical = F.normalize(self.lexical(term_ids, offsets, per_sample_weights=weights), dim=-1)
        return torch.cat([self.semantic_scale * self.semantic(vectors), self.lexical_scale * lexical], dim=-1)


def initial_embedding(config: LexicalTowerConfig, seed: int) -> torch.Tensor:
    """E [vocabulary, lexical_dim], entries N(0, 1/lexical_dim): a random projection of the tf-idf vectors."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(config.vocabulary_size, config.lexical_dim, generator=generator) / math.sqrt(config.lexical_dim)


class LexicalDualTower(nn.Module):
    """f_q and f_i with a semantic and a lexical part each; no parameter is shared between them.
    The term vocabulary (`TermVectoriser`) is fitted on the catalogue and saved with the weights."""

    kind = "mlp_lexical"
    files = (WEIGHTS_FILE, CONFIG_FILE, VOCABULARY_FILE)

    def __init__(self, config: LexicalTowerConfig, vectoriser: TermVectoriser, projection: torch.Tensor,
                 embedding: torch.Tensor):
        super().__init__()
        if len(vectoriser) != config.vocabulary_size:
            raise ValueError(f"term vocabulary has {len(vectoriser)} terms, the towers expect {config.vocabulary_size}")
        self.config, self.vectoriser = config, vectoriser
        self.query_tower = LexicalTower(config, projection, embedding)
        self.item_tower = LexicalTower(config, projection, embedding)

    def inputs(self, texts: list[str], sentence_vectors: np.ndarray) -> LexicalInputs:
        """What the towers read of `texts`, given their MiniLM sentence vectors."""
        return LexicalInputs(np.asarray(sentence_vectors, dtype=np.float32), self.vectoriser.transform(texts))

    @torch.no_grad()
    def _encode(self, tower: LexicalTower, inputs: LexicalInputs) -> np.ndarray:
        if not isinstance(inputs, LexicalInputs):
            raise TypeError(f"lexical towers read LexicalInputs, got {type(inputs).__name__}")
        was_training = self.training
        self.eval()
        out = [tower(inputs.batch(np.arange(start, min(start + ENCODE_BATCH, len(inputs))))).numpy()
               for start in range(0, len(inputs), ENCODE_BATCH)]
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.config.dim), dtype=np.float32)

    def encode_queries(self, inputs: LexicalInputs) -> np.ndarray:
        """f_q: the query view (of queries, or of items for the coarse index level)."""
        return self._encode(self.query_tower, inputs)

    def encode_items(self, inputs: LexicalInputs) -> np.ndarray:
        """f_i: the item view (of items, or of queries in the swap loss)."""
        return self._encode(self.item_tower, inputs)

    def read_texts(self, texts: list[str], sentence_vectors: Callable[[list[str]], np.ndarray], text_params: dict,
                   desc: str) -> LexicalInputs:
        """What the towers read of `texts` in training: their MiniLM sentence vectors and their terms."""
        return self.inputs(texts, sentence_vectors(texts))

    def encode_query_texts(self, texts: list[str], sentence_vectors: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """f_q of raw query texts: their MiniLM sentence vectors and their terms."""
        return self.encode_queries(self.inputs(texts, sentence_vectors(texts)))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({"kind": self.kind, **asdict(self.config)}, indent=2))
        self.vectoriser.save(folder)

    @classmethod
    def untrained(cls, folder: Path, settings: dict) -> "LexicalDualTower":
        """Towers of the shape `settings` (towers.json less `kind`) describe, with the term
        vocabulary saved in `folder`, for the saved weights."""
        config = LexicalTowerConfig(**settings)
        return cls(config, TermVectoriser.load(folder), torch.zeros(config.out_dim, config.in_dim),
                   torch.zeros(config.vocabulary_size, config.lexical_dim))

    @staticmethod
    def quantised_width(settings: dict) -> int | None:
        """The semantic block's width: the SIDs quantise [s(x)] alone. The lexical block is a
        near-isotropic projection of sparse terms, so once the first level (the SCI cell, routed on
        the whole vector) is taken out its residual has no cluster structure and residual k-means
        collapses on it (Home Depot: level-2 perplexity 2.0 of 32 codes, so the 100 SIDs of a pool
        held 8,161 items against ~2,700 for the mlp towers)."""
        return int(settings["out_dim"])
