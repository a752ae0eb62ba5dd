"""Lexical baseline: BM25 over item texts with the `bm25s` library.

Tokenisation is bm25s's: lower-cased words of 2+ characters, stopwords removed, then the
Snowball stemmer of `bm25.stemmer` (PyStemmer), so "drills" and "drill" are one term, as
in every production BM25 a search team runs. Query words missing from the catalogue
vocabulary are dropped; items with score 0 (no shared term) are not returned, so a query
without any catalogue term gets an empty ranking rather than an arbitrary one.
"""
from __future__ import annotations

from typing import Sequence

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer


def snowball_stemmer(algorithm: str | None):
    """PyStemmer's Snowball stemmer `algorithm` (e.g. "english"), or None for no stemming."""
    if algorithm is None:
        return None
    import Stemmer

    if algorithm not in Stemmer.algorithms():
        raise ValueError(f"bm25.stemmer {algorithm!r} is not a Snowball algorithm; known: {Stemmer.algorithms()}")
    return Stemmer.Stemmer(algorithm)


class BM25Retriever:
    def __init__(self, item_texts: Sequence[str], k1: float, b: float, method: str, stopwords: str | None,
                 stemmer: str | None):
        if not len(item_texts):
            raise ValueError("BM25 needs at least one item text to index")
        self.tokenizer = Tokenizer(stopwords=stopwords or [], stemmer=snowball_stemmer(stemmer))
        corpus = self.tokenizer.tokenize([str(text) for text in item_texts], return_as="ids", show_progress=False)
        self.model = bm25s.BM25(k1=k1, b=b, method=method)
        self.model.index(corpus, show_progress=False)
        self.n_items = len(item_texts)

    @classmethod
    def from_params(cls, item_texts: Sequence[str], bm25_params: dict) -> "BM25Retriever":
        return cls(item_texts, bm25_params["k1"], bm25_params["b"], bm25_params["method"], bm25_params["stopwords"],
                   bm25_params["stemmer"])

    def _tokens(self, queries: Sequence[str]):
        return self.tokenizer.tokenize([str(query) for query in queries], update_vocab=False,
                                       return_as="ids", show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n, k], item rows [n, k]) best first; rows are -1 where no further item shares a term."""
        rows, scores = self.model.retrieve(self._tokens(queries), k=min(k, self.n_items), show_progress=False)
        rows = np.where(scores > 0, rows, -1).astype(np.int64)
        if k > self.n_items:
            pad = k - self.n_items
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)))
        return scores, rows

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 score of every item for every query: [n_queries, n_items] float32."""
        return np.stack([self.model.get_scores(tokens) for tokens in self._tokens(queries)]).astype(np.float32)
