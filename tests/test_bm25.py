"""BM25 lexical baseline (bm25s)."""
from __future__ import annotations

from sid_models.lexical.bm25 import BM25Retriever

TITLES = ["Milwaukee M18 cordless hammer drill", "Delta chrome kitchen faucet with sprayer",
          "Behr premium plus interior paint white", "Everbilt brass door hinge 3.5 in",
          "Husky 25 ft tape measure", "Glacier Bay two piece toilet"]
BM25 = {"k1": 1.2, "b": 0.75, "method": "lucene", "stopwords": "en", "stemmer": "english"}


def test_exact_title_match_ranks_first():
    retriever = BM25Retriever.from_params(TITLES, BM25)
    _, rows = retriever.search(TITLES, k=3)
    assert rows[:, 0].tolist() == list(range(len(TITLES)))


def test_partial_query_finds_the_item_sharing_its_words():
    retriever = BM25Retriever.from_params(TITLES, BM25)
    _, rows = retriever.search(["kitchen faucet sprayer"], k=2)
    assert rows[0, 0] == 1


def test_no_shared_word_returns_no_item_and_short_catalogues_pad():
    retriever = BM25Retriever.from_params(TITLES, BM25)
    scores, rows = retriever.search(["zzzz qqqq", "toilet"], k=10)
    assert rows.shape == (2, 10)
    assert (rows[0] == -1).all()
    assert rows[1, 0] == 5 and (rows[1, 1:] == -1).all() and scores[1, 0] > 0


def test_stemming_matches_inflected_forms_and_can_be_switched_off():
    titles = ["cordless drills and drivers", "painted fence post"]
    stemmed = BM25Retriever.from_params(titles, BM25)
    unstemmed = BM25Retriever.from_params(titles, {**BM25, "stemmer": None})
    assert stemmed.search(["drill"], k=1)[1][0, 0] == 0
    assert unstemmed.search(["drill"], k=1)[1][0, 0] == -1


def test_unknown_stemmer_is_refused_with_the_known_ones():
    import pytest

    with pytest.raises(ValueError, match="'klingon' is not a Snowball algorithm"):
        BM25Retriever.from_params(TITLES, {**BM25, "stemmer": "klingon"})


def test_scores_agree_with_search():
    retriever = BM25Retriever.from_params(TITLES, BM25)
    scores, rows = retriever.search(["kitchen faucet", "tape measure"], k=1)
    full = retriever.scores(["kitchen faucet", "tape measure"])
    assert full.shape == (2, len(TITLES))
    assert full.argmax(axis=1).tolist() == rows[:, 0].tolist()
    assert abs(full[0, rows[0, 0]] - scores[0, 0]) < 1e-5
