"""Query-like views of item texts for the indexing task: what a shopper might type for an item.

Home Depot queries are 3.3 words with typos; titles 11.5 words. An item no training query
reaches (77 % of the relevant test pairs) is otherwise learnt from its full title alone,
a text unlike the queries that will have to reach it. Each item gets `views` extra texts,
seeded per item, each one of (cycling through the kinds, so every kind is used), with a
length drawn from `min_words`..`max_words`:
- `type`: the product type, i.e. the last words of the title's head — the part before the
  first " in ", " with ", " for ", "(" or "," ("Gas Lawn Mower with Briggs ..." ->
  "gas lawn mower"), which is what most real queries name ("gas mowe", "microwaves");
- `brand_type`: the title's first word (usually the brand) and the product type;
- `terms`: the words of highest IDF over the catalogue's titles (model, series, material),
  kept in title order;
then, with probability `typo_rate`, one spelling slip of the kinds seen in real queries:
a dropped, doubled or swapped letter, or two words merged, or one split.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

WORD = re.compile(r"[a-z0-9][a-z0-9.\-/']*")
HEAD_END = re.compile(r" in | with | for |\(|,| - ")
KINDS = ("type", "brand_type", "terms")


@dataclass(frozen=True)
class ViewConfig:
    """params `sft.indexing_views` (the SFT indexing task) or `sci.train.pseudo_queries` (tower pairs)."""

    views: int
    min_words: int
    max_words: int
    typo_rate: float

    @classmethod
    def from_params(cls, section: dict, where: str) -> "ViewConfig":
        """The view settings of params section `section`; `where` names it in the error."""
        config = cls(int(section["views"]), int(section["min_words"]), int(section["max_words"]),
                     float(section["typo_rate"]))
        if config.views < 0 or not 1 <= config.min_words <= config.max_words or not 0 <= config.typo_rate <= 1:
            raise ValueError(f"{where} needs views >= 0, 1 <= min_words <= max_words and typo_rate in "
                             f"[0, 1]; got {section}")
        return config


def words(text: str) -> list[str]:
    return WORD.findall(str(text).lower())


def typo(text: str, rng: np.random.Generator) -> str:
    """One spelling slip: drop, double or swap a letter inside a word, merge two words or split one."""
    tokens = text.split()
    long_words = [index for index, token in enumerate(tokens) if len(token) >= 4]
    kind = int(rng.integers(5))
    if kind == 3 and len(tokens) >= 2:
        at = int(rng.integers(len(tokens) - 1))
        return " ".join(tokens[:at] + [tokens[at] + tokens[at + 1]] + tokens[at + 2:])
    if not long_words:
        return text
    index = long_words[int(rng.integers(len(long_words)))]
    word = tokens[index]
    at = int(rng.integers(1, len(word) - 1))
    if kind == 0 or (kind == 2 and word[at] == word[at + 1]):     # swapping equal letters changes nothing
        word = word[:at] + word[at + 1:]
    elif kind == 1:
        word = word[:at] + word[at] + word[at:]
    elif kind == 2:
        word = word[:at] + word[at + 1] + word[at] + word[at + 2:]
    else:
        word = word[:at] + " " + word[at:]
    tokens[index] = word
    return " ".join(tokens)


def query_like_views(titles: Sequence[str], config: ViewConfig, seed: int) -> list[list[str]]:
    """`config.views` query-like texts per title (module docstring); deterministic in `seed`."""
    tokenised = [words(title) for title in titles]
    heads = [words(HEAD_END.split(str(title).lower(), maxsplit=1)[0]) or title_words
             for title, title_words in zip(titles, tokenised)]
    document_frequency = Counter(word for title_words in tokenised for word in set(title_words))
    n_titles = max(len(titles), 1)
    idf = {word: float(np.log(n_titles / count)) for word, count in document_frequency.items()}
    views = []
    for row, title_words in enumerate(tokenised):
        rng = np.random.default_rng([seed, row])
        item_views = []
        for view in range(config.views):
            if not title_words:
                item_views.append(str(titles[row]))
                continue
            length = int(rng.integers(config.min_words, config.max_words + 1))
            kind, head = KINDS[view % len(KINDS)], heads[row]
            if kind == "type":
                chosen = head[-length:]
            elif kind == "brand_type":
                chosen = title_words[:1] + [word for word in head[1:]][-(length - 1):] if length > 1 else title_words[:1]
            else:
                ranked = sorted(range(len(title_words)), key=lambda i: (-idf[title_words[i]], i))
                chosen = [title_words[i] for i in sorted(ranked[:length])]
            text = " ".join(chosen)
            if rng.random() < config.typo_rate:
                text = typo(text, rng)
            item_views.append(text)
        views.append(item_views)
    return views


def view_major(views: Sequence[Sequence[str]]) -> list[str]:
    """`query_like_views`' texts in view-major order: view 0 of every item, then view 1 of every item, ..."""
    return [item_views[view] for view in range(len(views[0]) if views else 0) for item_views in views]
