"""Candidates and features for the learned rankers of the generative (`pool`) and `hybrid` systems.

Candidates of a query come from up to three channels:
- `pool`: the items of the top `pool_sids` SIDs the generative retriever decodes (constrained
  beam of max(decode.beam_size, pool_sids), beam order): every item of each SID's leaf bucket;
- `bm25`: BM25's top `bm25_depth` items (stemmed, `lexical/bm25.py`);
- `dense`: the SCI towers' top `dense_depth` items by f_q(query) · f_i(item), exact;
- `history`: the top `history_depth` items by `history_cosine` (below): the warm items whose
  training queries read like this one.
The generative system ranks the pool alone; `hybrid` ranks the union of the channels.

Features of a (query, item) pair, whatever channel brought it (FEATURES, in column order;
NaN where a feature does not exist for the pair, which LightGBM routes as missing):
- beam: `beam_rank` (0-based rank of the first decoded SID whose bucket holds the item,
  among all `beam_size` beams), `beam_score` (that SID's length-normalised log-probability),
  `beam_gap` (best beam score minus it);
- the item's SID: `sid_length`, `log_bucket_size` (items sharing its SID), `cell_beam_rank`
  (rank of the first decoded SID in the item's first-level cell: the model's vote for the
  region of the catalogue, which reaches items whose exact SID it did not decode);
- dense: `sci_score`, `sci_rank` (rank in the dense top `dense_depth`), `minilm_cosine`
  (zero-shot MiniLM), `sci_gap` (best SCI score of the query minus the item's), `minilm_gap`
  (best MiniLM cosine among the query's candidates minus the item's);
- lexical: `bm25_score`, `bm25_rank` (rank in the BM25 top `bm25_depth`), `bm25_ratio`
  (score / the query's best BM25 score), `trigram_jaccard` (character trigrams of query and
  title: survives misspellings such as "cordles dril"), `query_terms_in_title` (share of the
  query's stemmed words found among the title's), `type_terms_in_query` (share of the title's
  product-type words — the last two words before " in ", " with ", "(", ... as in
  `text/views.py` — found in the query: "gas mower" names what "Toro ... Gas Lawn Mower
  with Briggs Engine" is), `prefix_terms_in_title` (share of the query's distinct 4-letter word
  prefixes found among the title's: "cordles" and "cordless" meet where stemming and
  trigrams part), `numbers_in_title` (share of the query's distinct digit runs found in the
  title: sizes and models such as "2x4", "18v"; NaN for a query without one),
  `bigrams_in_title` (share of the query's stemmed word pairs found in the title; NaN for a
  one-word query);
- popularity: `log_exposure` (relevant training judgments of the item: training split only);
- query history (`QueryHistory`; training split only, NaN for an item no training query
  reached): `history_bm25` (BM25 of the query against the texts of the training queries
  judged relevant to the item, one document per item), `history_ratio` (that / the query's
  best), `history_cosine` (the highest MiniLM cosine between the query and one of those
  training queries). Without them the ranker under-ranks warm items: a query much like one
  seen in training is the strongest evidence there is, and neither the title nor the SID
  carries it. The same evidence lent through the SID: `bucket_history_cosine` and
  `bucket_history_bm25` (the highest `history_cosine` / `history_bm25` over the items sharing
  the item's SID) and `cell_history_cosine` (over its first-level cell), which reach cold
  items whose SID neighbours were judged for a query like this one;
- sizes: `query_words`, `title_words`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..generative.retriever import GenerativeRetriever
from ..text.views import HEAD_END
from ..lexical.bm25 import BM25Retriever, snowball_stemmer

FEATURES = ("beam_rank", "beam_score", "beam_gap", "sid_length", "log_bucket_size", "cell_beam_rank",
            "sci_score", "sci_rank", "minilm_cosine", "sci_gap", "minilm_gap",
            "bm25_score", "bm25_rank", "bm25_ratio", "trigram_jaccard", "query_terms_in_title", "type_terms_in_query",
            "prefix_terms_in_title", "numbers_in_title", "bigrams_in_title",
            "log_exposure", "history_bm25", "history_ratio", "history_cosine",
            "bucket_history_cosine", "bucket_history_bm25", "cell_history_cosine", "query_words", "title_words")
CHANNELS = ("pool", "bm25", "dense", "history")
WORD = re.compile(r"\w+")
NUMBER = re.compile(r"\d+")
PREFIX = 4


def prefixes(words: Sequence[str]) -> set[str]:
    """The distinct first PREFIX letters of `words`."""
    return {word[:PREFIX] for word in words}


def bigrams(terms: Sequence[str]) -> set[str]:
    """The distinct pairs of adjacent `terms`."""
    return {f"{first} {second}" for first, second in zip(terms, terms[1:])}


def trigrams(text: str) -> frozenset[str]:
    """Character trigrams of the lower-cased words of `text`, each word padded with spaces."""
    grams: set[str] = set()
    for word in WORD.findall(text.lower()):
        padded = f" {word} "
        grams.update(padded[i:i + 3] for i in range(len(padded) - 2))
    return frozenset(grams)


@dataclass(frozen=True)
class CandidateSettings:
    """Which channels feed a ranker and how deep each one is read."""

    channels: tuple[str, ...]
    pool_sids: int
    bm25_depth: int
    dense_depth: int
    history_depth: int

    def __post_init__(self):
        unknown = [channel for channel in self.channels if channel not in CHANNELS]
        if unknown or not self.channels:
            raise ValueError(f"ranker channels must be a non-empty subset of {CHANNELS}, got {list(self.channels)}")
        for name in ("pool_sids", "bm25_depth", "dense_depth", "history_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"ranker {name} must be >= 1, got {getattr(self, name)}")


class QueryHistory:
    """The training queries judged relevant to each item, as one BM25 document per warm item
    and as MiniLM vectors, for the `history_*` features and the `history` channel."""

    def __init__(self, item_rows: np.ndarray, query_texts: Sequence[str], query_vectors: np.ndarray, n_items: int,
                 bm25_params: dict):
        item_rows = np.asarray(item_rows, dtype=np.int64)
        if len(item_rows) != len(query_texts) or len(item_rows) != len(query_vectors):
            raise ValueError(f"query history needs one item row, text and vector per pair; got {len(item_rows)}, "
                             f"{len(query_texts)}, {len(query_vectors)}")
        if len(item_rows) and (item_rows.min() < 0 or item_rows.max() >= n_items):
            raise ValueError(f"query history names item rows outside the catalogue of {n_items} items")
        order = np.argsort(item_rows, kind="stable")
        self.pair_rows, self.pair_vectors = item_rows[order], np.asarray(query_vectors, dtype=np.float32)[order]
        texts = [str(query_texts[index]) for index in order]
        self.warm_rows, self.starts = np.unique(self.pair_rows, return_index=True)
        self.n_items = n_items
        documents = [" ".join(texts[start:end]) for start, end
                     in zip(self.starts, list(self.starts[1:]) + [len(texts)])]
        self.bm25 = BM25Retriever.from_params(documents, bm25_params) if documents else None

    def bm25_scores(self, queries: Sequence[str]) -> np.ndarray:
        """[n_queries, n_items] BM25 score of each query against each item's history; NaN for cold items."""
        out = np.full((len(queries), self.n_items), np.nan, dtype=np.float32)
        if self.bm25 is not None:
            out[:, self.warm_rows] = self.bm25.scores(queries)
        return out

    def cosine(self, query_vector: np.ndarray) -> np.ndarray:
        """[n_items] highest cosine of `query_vector` with one of each item's training queries; NaN for cold items."""
        out = np.full(self.n_items, np.nan, dtype=np.float32)
        if len(self.pair_rows):
            out[self.warm_rows] = np.maximum.reduceat(self.pair_vectors @ query_vector, self.starts)
        return out


@dataclass
class QueryCandidates:
    """One query's candidate item rows and their feature matrix [n_candidates, len(FEATURES)]."""

    rows: np.ndarray
    features: np.ndarray


class CandidateFeaturizer:
    """Everything features are computed from: the generative retriever (its decoder, trie buckets,
    SCI query tower and item views), BM25, MiniLM item vectors, the items' training exposure
    and their training queries. `query_tower(texts, their MiniLM vectors)` gives the SCI query vectors."""

    def __init__(self, retriever: GenerativeRetriever, bm25: BM25Retriever, encode_minilm: Callable[[list[str]], np.ndarray],
                 query_tower: Callable[[list[str], np.ndarray], np.ndarray], minilm_items: np.ndarray,
                 titles: Sequence[str], exposure: np.ndarray, history: QueryHistory):
        n_items = len(retriever.item_ids)
        for name, values in (("minilm_items", minilm_items), ("titles", titles), ("exposure", exposure)):
            if len(values) != n_items:
                raise ValueError(f"{name} has {len(values)} rows for {n_items} catalogue items")
        if history.n_items != n_items:
            raise ValueError(f"query history covers {history.n_items} items, the catalogue has {n_items}")
        self.retriever, self.bm25, self.history = retriever, bm25, history
        self.encode_minilm, self.query_tower = encode_minilm, query_tower
        self.minilm_items = minilm_items
        self.titles = [str(title) for title in titles]
        self.title_word_counts = np.array([len(WORD.findall(title)) for title in self.titles], dtype=np.float32)
        self.stem = snowball_stemmer("english").stemWords
        # the titles' words, product-type words, prefixes, numbers, bigrams and character trigrams as
        # sparse item x vocabulary matrices, built once: per-candidate set operations cost a served query ~25 ms
        lowered_words = [WORD.findall(title.lower()) for title in self.titles]
        stemmed_words = [self.stem(words) for words in lowered_words]
        self.term_vocab: dict[str, int] = {}
        self.title_terms = _incidence([set(stems) for stems in stemmed_words], self.term_vocab)
        self.type_terms = _incidence([self.stem(WORD.findall(HEAD_END.split(title.lower(), maxsplit=1)[0])[-2:])
                                      for title in self.titles], self.term_vocab)
        self.prefix_vocab: dict[str, int] = {}
        self.title_prefixes = _incidence([prefixes(words) for words in lowered_words], self.prefix_vocab)
        self.number_vocab: dict[str, int] = {}
        self.title_numbers = _incidence([set(NUMBER.findall(title.lower())) for title in self.titles], self.number_vocab)
        self.bigram_vocab: dict[str, int] = {}
        self.title_bigrams = _incidence([bigrams(stems) for stems in stemmed_words], self.bigram_vocab)
        self.type_term_counts = np.asarray(self.type_terms.sum(axis=1)).ravel().astype(np.float32)
        self.gram_vocab: dict[str, int] = {}
        self.title_trigrams = _incidence([trigrams(title) for title in self.titles], self.gram_vocab)
        self.title_gram_counts = np.asarray(self.title_trigrams.sum(axis=1)).ravel().astype(np.float32)
        self.log_exposure = np.log1p(np.asarray(exposure, dtype=np.float32))
        buckets = retriever.buckets
        self.sid_of_row = buckets.sid_of_row()
        # every item's SID is the trie's SID of its bucket
        self.cell_of_sid = np.array([sid[0] for sid in retriever.trie.sids], dtype=np.int64)
        self.sid_length_of_sid = np.array([len(sid) for sid in retriever.trie.sids], dtype=np.float32)
        self.sid_length = self.sid_length_of_sid[self.sid_of_row]
        self.cell_of_row = self.cell_of_sid[self.sid_of_row]
        # history features are NaN off the warm items, so their SID and cell maxima need only
        # the warm items, grouped once: a served query then reduces thousands of rows, not the catalogue
        self.sid_groups = WarmGroups(history.warm_rows, self.sid_of_row)
        self.cell_groups = WarmGroups(history.warm_rows, self.cell_of_row)
        self.log_bucket_size = np.log(buckets.sizes().astype(np.float32))[self.sid_of_row]

    def candidates(self, queries: list[str], settings: CandidateSettings) -> list[QueryCandidates]:
        """Candidates and features of every query, in order."""
        queries = [str(query) for query in queries]
        if not queries:
            return []
        minilm_queries = self.encode_minilm(queries)
        sci_queries = self.query_tower(queries, minilm_queries)
        # a pool deeper than the checkpoint's beam widens the beam to match
        sids, beam_scores = self.retriever.search_sids(queries, max(self.retriever.beam_size, settings.pool_sids),
                                                       sci_queries)
        bm25_scores = self.bm25.scores(queries)
        history_bm25 = self.history.bm25_scores(queries)
        out = []
        for position, query in enumerate(queries):
            out.append(self._query(query, settings, sids[position], beam_scores[position], bm25_scores[position],
                                   history_bm25[position], minilm_queries[position], sci_queries[position]))
        return out

    def _query(self, query: str, settings: CandidateSettings, sids: np.ndarray, beam_scores: np.ndarray,
               bm25_scores: np.ndarray, history_bm25: np.ndarray, minilm_query: np.ndarray,
               sci_query: np.ndarray) -> QueryCandidates:
        buckets = self.retriever.buckets
        finished = sids[sids >= 0]
        sci_scores = self.retriever.item_vectors @ sci_query
        dense_top = np.argpartition(-sci_scores, min(settings.dense_depth, len(sci_scores) - 1))[:settings.dense_depth]
        dense_top = dense_top[np.argsort(-sci_scores[dense_top], kind="stable")]
        bm25_top = np.flatnonzero(bm25_scores > 0)
        bm25_top = bm25_top[np.argsort(-bm25_scores[bm25_top], kind="stable")][:settings.bm25_depth]
        history_cosine = self.history.cosine(minilm_query)
        warm = np.flatnonzero(~np.isnan(history_cosine))
        history_top = warm[np.argsort(-history_cosine[warm], kind="stable")][:settings.history_depth]
        parts = []
        if "pool" in settings.channels:
            parts.append(buckets.items_of(finished[:settings.pool_sids]))
        if "bm25" in settings.channels:
            parts.append(bm25_top)
        if "dense" in settings.channels:
            parts.append(dense_top)
        if "history" in settings.channels:
            parts.append(history_top)
        rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

        n = len(rows)
        features = np.full((n, len(FEATURES)), np.nan, dtype=np.float32)
        column = {name: index for index, name in enumerate(FEATURES)}
        ranks = _first_rank(finished, len(self.sid_length_of_sid))[self.sid_of_row[rows]]
        decoded = ranks >= 0
        features[decoded, column["beam_rank"]] = ranks[decoded]
        features[decoded, column["beam_score"]] = beam_scores[ranks[decoded]]
        if len(finished):
            features[decoded, column["beam_gap"]] = beam_scores[0] - beam_scores[ranks[decoded]]
        cell_ranks = _first_rank(self.cell_of_sid[finished], int(self.cell_of_sid.max()) + 1)[self.cell_of_row[rows]]
        features[:, column["cell_beam_rank"]] = np.where(cell_ranks >= 0, cell_ranks, np.nan)
        features[:, column["sid_length"]] = self.sid_length[rows]
        features[:, column["log_bucket_size"]] = self.log_bucket_size[rows]
        features[:, column["sci_score"]] = sci_scores[rows]
        features[:, column["sci_gap"]] = sci_scores[dense_top[0]] - sci_scores[rows]
        features[:, column["sci_rank"]] = _rank_in(rows, dense_top)
        features[:, column["minilm_cosine"]] = self.minilm_items[rows] @ minilm_query
        if n:
            features[:, column["minilm_gap"]] = features[:, column["minilm_cosine"]].max() - features[:, column["minilm_cosine"]]
        features[:, column["bm25_score"]] = bm25_scores[rows]
        features[:, column["bm25_rank"]] = _rank_in(rows, bm25_top)
        best_bm25 = float(bm25_scores[bm25_top[0]]) if len(bm25_top) else 0.0
        features[:, column["bm25_ratio"]] = bm25_scores[rows] / best_bm25 if best_bm25 > 0 else 0.0
        query_grams, query_terms = trigrams(query), self.stem(WORD.findall(query.lower()))
        gram_ids = [self.gram_vocab[gram] for gram in query_grams if gram in self.gram_vocab]
        shared_grams = _row_sums(self.title_trigrams, rows, gram_ids)
        union = len(query_grams) + self.title_gram_counts[rows] - shared_grams
        features[:, column["trigram_jaccard"]] = shared_grams / np.maximum(union, 1)
        # a repeated query word counts each time, as the share of the query's words
        term_ids = [self.term_vocab[term] for term in query_terms if term in self.term_vocab]
        features[:, column["query_terms_in_title"]] = (_row_sums(self.title_terms, rows, term_ids)
                                                       / max(len(query_terms), 1))
        distinct_ids = sorted(set(term_ids))
        features[:, column["type_terms_in_query"]] = (_row_sums(self.type_terms, rows, distinct_ids)
                                                      / np.maximum(self.type_term_counts[rows], 1))
        features[:, column["prefix_terms_in_title"]] = _share_found(self.title_prefixes, self.prefix_vocab, rows,
                                                                    prefixes(WORD.findall(query.lower())))
        features[:, column["numbers_in_title"]] = _share_found(self.title_numbers, self.number_vocab, rows,
                                                               set(NUMBER.findall(query.lower())))
        features[:, column["bigrams_in_title"]] = _share_found(self.title_bigrams, self.bigram_vocab, rows,
                                                               bigrams(query_terms))
        features[:, column["log_exposure"]] = self.log_exposure[rows]
        features[:, column["history_bm25"]] = history_bm25[rows]
        best_history = np.nanmax(history_bm25) if len(warm) else 0.0
        features[:, column["history_ratio"]] = (history_bm25[rows] / best_history if best_history > 0
                                                 else history_bm25[rows] * 0.0)  # cold rows stay NaN
        features[:, column["history_cosine"]] = history_cosine[rows]
        features[:, column["bucket_history_cosine"]] = self.sid_groups.max_of(history_cosine, rows)
        features[:, column["bucket_history_bm25"]] = self.sid_groups.max_of(history_bm25, rows)
        features[:, column["cell_history_cosine"]] = self.cell_groups.max_of(history_cosine, rows)
        features[:, column["query_words"]] = len(query_terms)
        features[:, column["title_words"]] = self.title_word_counts[rows]
        return QueryCandidates(rows=rows, features=features)


def _share_found(matrix, vocab: dict[str, int], rows: np.ndarray, wanted: set[str]) -> np.ndarray:
    """Share of the distinct tokens `wanted` found in each of `rows` of the 0/1 incidence
    `matrix` over `vocab`; NaN for every row when nothing is wanted."""
    if not wanted:
        return np.full(len(rows), np.nan, dtype=np.float32)
    return _row_sums(matrix, rows, sorted(vocab[token] for token in wanted if token in vocab)) / len(wanted)


class WarmGroups:
    """The warm item rows grouped by a per-item group label (SID or first-level cell), for the
    largest value of a per-item array within the group of each candidate."""

    def __init__(self, warm_rows: np.ndarray, group_of_row: np.ndarray):
        groups = group_of_row[warm_rows]
        order = np.argsort(groups, kind="stable")
        self.rows = warm_rows[order]
        labels, self.starts = np.unique(groups[order], return_index=True)
        # each item's position among the warm groups, -1 where its group holds no warm item
        position = np.minimum(np.searchsorted(labels, group_of_row), max(len(labels) - 1, 0))
        found = labels[position] == group_of_row if len(labels) else np.zeros(len(group_of_row), dtype=bool)
        self.group_of_row = np.where(found, position, -1)

    def max_of(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per row of `rows`: the largest non-NaN `values` over the warm items of its group;
        NaN where the group holds no warm item or only NaN."""
        out = np.full(len(rows), np.nan, dtype=np.float32)
        groups = self.group_of_row[rows]
        has_warm = groups >= 0
        if len(self.rows) and has_warm.any():
            out[has_warm] = np.fmax.reduceat(values[self.rows], self.starts)[groups[has_warm]]
        return out


def _rank_in(rows: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """0-based position of each of `rows` in `ranked`, NaN where absent."""
    ranks = _first_rank(ranked, int(max(rows.max(initial=0), ranked.max(initial=0))) + 1)[rows].astype(np.float32)
    ranks[ranks < 0] = np.nan
    return ranks


def _incidence(token_lists: Sequence, vocab: dict[str, int]):
    """Sparse CSR [n_rows, len(vocab)] float32 counts of each row's tokens; grows `vocab`."""
    from scipy.sparse import csr_matrix

    indptr, indices = [0], []
    for tokens in token_lists:
        indices.extend(vocab.setdefault(token, len(vocab)) for token in tokens)
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float32)
    matrix = csr_matrix((data, np.array(indices, dtype=np.int64), np.array(indptr, dtype=np.int64)),
                        shape=(len(token_lists), max(len(vocab), 1)))
    matrix.sum_duplicates()
    return matrix


def _row_sums(matrix, rows: np.ndarray, columns: list[int]) -> np.ndarray:
    """Sum over `columns` (repeats count again) of each of `rows` of a sparse matrix."""
    if not columns or not len(rows):
        return np.zeros(len(rows), dtype=np.float32)
    weights = np.bincount(np.asarray(columns, dtype=np.int64), minlength=matrix.shape[1]).astype(np.float32)
    return np.asarray(matrix[rows] @ weights, dtype=np.float32).ravel()


def _first_rank(ranked: np.ndarray, size: int) -> np.ndarray:
    """[size] int64: the first position of each value in `ranked`, -1 for values absent from it."""
    out = np.full(size, -1, dtype=np.int64)
    values, first = np.unique(np.asarray(ranked, dtype=np.int64), return_index=True)
    out[values] = first
    return out
