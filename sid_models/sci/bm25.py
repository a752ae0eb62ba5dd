"""Lexical baseline: BM25 over item texts with the `bm25s` library.

Tokenisation is bm25s's (lower-cased words of 2+ characters, English stopwords removed, no
stemmer: none is installed). Query words missing from the catalogue vocabulary are
dropped; items with score 0 (no shared word) are not returned, so a query without any
catalogue word gets an empty ranking rather than an arbitrary one.
"""
from __future__ import annotations

from typing import Sequence

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer


class BM25Retriever:
    def __init__(self, item_texts: Sequence[str], k1: float, b: float, method: str, stopwords: str | None):
        if not len(item_texts):
            raise ValueError("BM25 needs at least one item text to index")
        self.tokenizer = Tokenizer(stopwords=stopwords or [])
        corpus = self.tokenizer.tokenize([str(text) for text in item_texts], return_as="ids", show_progress=False)
        self.model = bm25s.BM25(k1=k1, b=b, method=method)
        self.model.index(corpus, show_progress=False)
        self.n_items = len(item_texts)

    @classmethod
    def from_params(cls, item_texts: Sequence[str], bm25_params: dict) -> "BM25Retriever":
        return cls(item_texts, bm25_params["k1"], bm25_params["b"], bm25_params["method"], bm25_params["stopwords"])

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n, k], item rows [n, k]) best first; rows are -1 where no further item shares a word."""
        tokens = self.tokenizer.tokenize([str(query) for query in queries], update_vocab=False,
                                         return_as="ids", show_progress=False)
        rows, scores = self.model.retrieve(tokens, k=min(k, self.n_items), show_progress=False)
        rows = np.where(scores > 0, rows, -1).astype(np.int64)
        if k > self.n_items:
            pad = k - self.n_items
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)))
        return scores, rows
