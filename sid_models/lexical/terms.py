"""Sparse lexical term vectors of texts: stemmed words and character trigrams, tf-idf weighted.

The terms of a text are its stemmed words (lower-cased runs of letters and digits, stopwords
removed, Snowball stemmer as BM25 uses) and the character trigrams of every word padded with a
space on each side ("drill" -> " dr", "dri", "ril", "ill", "ll "), so a misspelt query word
("cordles") still shares most of its trigrams with the title word ("cordless"). Weights, over
the N catalogue texts the vocabulary is fitted on:

    w(t, x) = (1 + ln tf(t, x)) · idf(t),    idf(t) = ln((1 + N) / (1 + df(t))) + 1

and each text's vector is L2-normalised, so the inner product of two vectors is their tf-idf
cosine. Terms outside the catalogue's vocabulary are dropped: no catalogue text can match them.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from bm25s.tokenization import _infer_stopwords

from .bm25 import snowball_stemmer

WORD = re.compile(r"[a-z0-9]+")
VOCABULARY_FILE = "terms.json"
WORD_PREFIX, GRAM_PREFIX = "w:", "c:"


def stopword_set(stopwords: str | None) -> frozenset[str]:
    """bm25s's stopword list `stopwords` ("en", ...), empty for None."""
    return frozenset(_infer_stopwords(stopwords) if stopwords else ())


def text_terms(text: str, stemmer, stopwords: frozenset[str]) -> list[str]:
    """The terms of `text`, with repeats (their count is the term frequency): its stemmed words
    less `stopwords` (`stemmer` None: unstemmed) and the trigrams of every space-padded word."""
    words = WORD.findall(str(text).lower())
    kept = [word for word in words if word not in stopwords]
    stems = stemmer.stemWords(kept) if stemmer is not None else kept
    grams = [f" {word} "[start:start + 3] for word in words for start in range(len(word))]
    return [WORD_PREFIX + stem for stem in stems] + [GRAM_PREFIX + gram for gram in grams]


class TermVectoriser:
    """tf-idf vectors of stemmed words and word-padded character trigrams (see the module docstring)."""

    def __init__(self, vocabulary: Sequence[str], idf: np.ndarray, stemmer: str | None, stopwords: str | None):
        if len(vocabulary) != len(idf):
            raise ValueError(f"term vocabulary has {len(vocabulary)} terms but {len(idf)} idf weights")
        self.vocabulary = list(vocabulary)
        self.index = {term: column for column, term in enumerate(self.vocabulary)}
        self.idf = np.asarray(idf, dtype=np.float32)
        self.stemmer_name, self.stopwords_name = stemmer, stopwords
        self.stemmer, self.stopwords = snowball_stemmer(stemmer), stopword_set(stopwords)

    def __len__(self) -> int:
        return len(self.vocabulary)

    def terms(self, text: str) -> list[str]:
        """The terms of `text`, with repeats (their count is the term frequency)."""
        return text_terms(text, self.stemmer, self.stopwords)

    @classmethod
    def fit(cls, texts: Sequence[str], stemmer: str | None, stopwords: str | None) -> "TermVectoriser":
        """The vocabulary and idf of the terms of `texts` (the catalogue)."""
        if not len(texts):
            raise ValueError("the term vocabulary needs at least one text to fit on")
        stem, skipped = snowball_stemmer(stemmer), stopword_set(stopwords)
        document_frequency = Counter(term for text in texts for term in set(text_terms(text, stem, skipped)))
        vocabulary = sorted(document_frequency)
        df = np.array([document_frequency[term] for term in vocabulary], dtype=np.float64)
        return cls(vocabulary, np.log((1 + len(texts)) / (1 + df)) + 1, stemmer, stopwords)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """[len(texts), len(vocabulary)] float32, rows L2-normalised (an all-zero row for a text
        with no catalogue term)."""
        indptr, columns, values = [0], [], []
        for text in texts:
            counts = Counter(column for column in map(self.index.get, self.terms(text)) if column is not None)
            row = np.fromiter(counts, dtype=np.int64, count=len(counts))
            weights = (1 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * self.idf[row]
            norm = np.linalg.norm(weights)
            columns.append(row)
            values.append(weights / norm if norm > 0 else weights)
            indptr.append(indptr[-1] + len(row))
        return sp.csr_matrix((np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32),
                              np.concatenate(columns) if columns else np.zeros(0, np.int64), indptr),
                             shape=(len(texts), len(self.vocabulary)))

    def save(self, folder: str | Path) -> None:
        (Path(folder) / VOCABULARY_FILE).write_text(json.dumps(
            {"stemmer": self.stemmer_name, "stopwords": self.stopwords_name, "vocabulary": self.vocabulary,
             "idf": self.idf.tolist()}))

    @classmethod
    def load(cls, folder: str | Path) -> "TermVectoriser":
        saved = json.loads((Path(folder) / VOCABULARY_FILE).read_text())
        return cls(saved["vocabulary"], np.asarray(saved["idf"], dtype=np.float32), saved["stemmer"],
                   saved["stopwords"])
