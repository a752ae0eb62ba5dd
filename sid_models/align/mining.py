"""Preference mining: per preference query, positive and negative semantic-ID sequences.

Which queries (`queries`): `train`, the SFT model's own training queries, or `valid`, a seeded
`valid_mining_share` of the validation queries, which the SFT model never saw. On Home Depot
the SFT beam already holds 89 % of a training query's positives within 20 SIDs against 64 % for
a validation query: its mistakes on training queries are not the ones it makes on new queries,
and aligning on them lowered test NDCG@10 and the pool's coverage on every seed while aligning
on unseen queries kept both at the SFT model's level (README, alignment). With `valid`, the validation queries not mined are the
ones every validation figure of an aligned model is computed on (`selection_dataset`), so a
choice made on validation never reads a query the alignment trained on.

Preferences live at the level the product ranks, the SARQ leaf bucket: a SID names a bucket
that may hold several tail items, and the served system pools and ranks the items of the
top decoded buckets. Per training query:

- positives: SIDs whose bucket holds an item judged at or above the relevance threshold,
  best weight first, at most `max_positives`. `positive_weight`:
  `best_item`: `w = gain(best grade in the bucket) / gain(scale maximum)`;
  `bucket_gain`: `w = Σ gain(grade) / gain(scale maximum)` over the bucket's relevant items
  (a bucket that puts two relevant items in the pool is worth both);
- judged negatives: SIDs of items judged below the threshold whose bucket holds no relevant
  item of the query, at most `max_judged_negatives` (a seeded sample: all are real rejections);
- pseudo-negatives: the SFT model's own constrained-beam SIDs for the query whose bucket
  holds no judged item of the query (the model's mistakes, and noisy, since an unjudged item
  may be relevant; RDRW is what discounts the likely false ones). `pseudo_negatives`:
  `beam_top`: the first `max_pseudo_negatives` in beam order (the most confident mistakes);
  `pool_edge`: half of them from the beam's top, half from the last such SIDs of a beam as
  wide as the served pool (`pool_beam_size`). The pool ranker re-orders what is inside the
  pool, so what alignment can still change there is which buckets get in: a relevant bucket
  just outside the pool has to overtake the SIDs at its edge.

View queries (`view_items` > 0): preferences mined on training queries reach only the buckets
of items a training query judges relevant, and aligning on them alone moves mass toward those
warm buckets, so cold buckets leave the served pool (README, alignment). `view_queries` draws
`view_items` of the items no training query reaches (seeded) and gives each one of its
query-like views (`text/views.py`, the SFT indexing task's `sft.indexing_views`) as an extra
preference query: positive = the item's own SID (weight 1); with `view_negatives`, its
pseudo-negatives are the view's beam SIDs other than that one (`mine_view_preferences`),
without them only MLGC's SFT term acts on it (a replay of the indexing task). With
`judged_queries` false the view queries are all that is mined.

Every row records the SID's rank in the mining beam (`beam_rank`, -1 when absent), so the
summary can say how many positives the SFT beam already holds. Queries without a positive
are dropped (nothing to prefer). Ties and samples use a generator seeded by (seed, query id),
so the result does not depend on query order.
"""
from __future__ import annotations

import copy
import hashlib
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.schema import PreparedDataset
from ..generative.inputs import EncoderSources
from ..generative.model import Seq2SeqRetriever
from ..generative.trie import SidTrie, constrained_beam_search
from ..text.views import ViewConfig, query_like_views

ROLES = ("positive", "judged_negative", "pseudo_negative")
QUERY_SOURCES = ("train", "valid")
MINED_SPLIT = "preference"  # the split the mined validation queries take in `selection_dataset`
POSITIVE_WEIGHTS = ("best_item", "bucket_gain")
PSEUDO_NEGATIVES = ("beam_top", "pool_edge")
Sid = tuple[int, ...]
VIEW_PREFIX = "view:"       # query_id of a view query: VIEW_PREFIX + item_id


def _query_rng(seed: int, query_id: str) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}:{query_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def preference_query_ids(prepared: PreparedDataset, mining: dict, seed: int) -> list[str]:
    """The ids of the queries to mine, sorted: the judged-relevant queries of split
    `mining["queries"]`; for `valid`, a seeded `valid_mining_share` of them."""
    source = str(mining["queries"])
    if source not in QUERY_SOURCES:
        raise ValueError(f"align.mining.queries must be one of {QUERY_SOURCES}, got {source!r}")
    judged = sorted(set(prepared.relevant(source)["query_id"].astype(str)))
    if source == "train":
        return judged
    share = float(mining["valid_mining_share"])
    if not 0.0 < share < 1.0:
        raise ValueError(f"align.mining.valid_mining_share must be in (0, 1) (the rest select), got {share}")
    chosen = np.random.default_rng([seed, len(judged)]).permutation(len(judged))[:round(share * len(judged))]
    return sorted(judged[i] for i in chosen)


def selection_dataset(prepared: PreparedDataset, mining: dict, seed: int) -> PreparedDataset:
    """`prepared` as the validation figures of aligned models must read it: with `queries: valid`,
    the mined validation queries move to split MINED_SPLIT, so `valid` holds only the unmined ones."""
    if str(mining["queries"]) == "train":
        return prepared
    mined = set(preference_query_ids(prepared, mining, seed))
    view = copy.copy(prepared)
    view.queries = prepared.queries.assign(
        split=prepared.queries["split"].where(~prepared.queries["query_id"].astype(str).isin(mined), MINED_SPLIT))
    view.judgments = prepared.judgments.assign(
        split=prepared.judgments["split"].where(~prepared.judgments["query_id"].astype(str).isin(mined), MINED_SPLIT))
    return view


def selection_key(mining: dict) -> tuple:
    """What of `mining` decides which validation queries `selection_dataset` keeps."""
    return (mining["queries"], mining["valid_mining_share"]) if mining["queries"] == "valid" else ("train",)


def mine_preferences(prepared: PreparedDataset, item_sid: Mapping[str, Sid],
                     beam_sids: Mapping[str, Sequence[Sid]], mining: dict, seed: int) -> pd.DataFrame:
    """Mine the preference table of the preference queries (`preference_query_ids`).

    `item_sid`: item_id -> SID codes; `beam_sids`: preference query_id -> the SFT model's
    constrained-beam SIDs, best first (as wide as `mining_beam_size(mining)`); `mining`: params
    `align.mining`. Returns one row per (query, SID): query_id, sid (list of codes), role
    (positive / judged_negative / pseudo_negative), weight (grade weight for positives, 1 for
    negatives), rank (position within its role), beam_rank (-1: not in the mining beam).
    """
    limits = {key: int(mining[key]) for key in ("max_positives", "max_judged_negatives", "max_pseudo_negatives")}
    if limits["max_positives"] < 1 or min(limits.values()) < 0:
        raise ValueError(f"align.mining sizes must be >= 0 (max_positives >= 1), got {limits}")
    positive_weight, pseudo_mode = str(mining["positive_weight"]), str(mining["pseudo_negatives"])
    if positive_weight not in POSITIVE_WEIGHTS:
        raise ValueError(f"align.mining.positive_weight must be one of {POSITIVE_WEIGHTS}, got {positive_weight!r}")
    if pseudo_mode not in PSEUDO_NEGATIVES:
        raise ValueError(f"align.mining.pseudo_negatives must be one of {PSEUDO_NEGATIVES}, got {pseudo_mode!r}")
    mined = set(preference_query_ids(prepared, mining, seed))
    judged = prepared.judgments[prepared.judgments["query_id"].astype(str).isin(mined)]
    unknown = sorted(set(judged["item_id"]) - set(item_sid))
    if unknown:
        raise ValueError(f"{len(unknown)} judged training items have no SID, e.g. {unknown[:5]}")
    scale = prepared.scale
    top_gain = float(scale.gain(scale.maximum))
    if top_gain <= 0:
        raise ValueError(f"relevance scale {scale} gives the top grade no gain")

    rows = []
    for query_id, group in judged.groupby("query_id", sort=True):
        rng = _query_rng(seed, str(query_id))
        grade_of: dict[Sid, float] = {}
        for item_id, relevance in zip(group["item_id"], group["relevance"]):
            if relevance >= scale.threshold:
                sid = tuple(int(c) for c in item_sid[item_id])
                weight = float(scale.gain(relevance)) / top_gain
                grade_of[sid] = (grade_of.get(sid, 0.0) + weight if positive_weight == "bucket_gain"
                                 else max(grade_of.get(sid, 0.0), weight))
        if not grade_of:
            continue
        candidates = list(grade_of)
        tie_break = rng.permutation(len(candidates))
        order = sorted(range(len(candidates)), key=lambda i: (-grade_of[candidates[i]], tie_break[i]))
        positives = [candidates[i] for i in order[:limits["max_positives"]]]
        # Every judged SID, kept or not, is excluded from the pseudo-negatives: those are unjudged.
        taken = set(grade_of)

        judged_negatives = []
        for item_id in group.loc[group["relevance"] < scale.threshold, "item_id"]:
            sid = tuple(int(c) for c in item_sid[item_id])
            if sid not in taken:
                taken.add(sid)
                judged_negatives.append(sid)
        if len(judged_negatives) > limits["max_judged_negatives"]:
            keep = np.sort(rng.choice(len(judged_negatives), limits["max_judged_negatives"], replace=False))
            judged_negatives = [judged_negatives[i] for i in keep]

        beam = [tuple(int(c) for c in sid) for sid in beam_sids.get(query_id, ())]
        beam_rank = {}
        for rank, sid in enumerate(beam):
            beam_rank.setdefault(sid, rank)
        unjudged = [sid for sid in dict.fromkeys(beam) if sid not in taken]
        pseudo_negatives = pick_pseudo_negatives(unjudged, limits["max_pseudo_negatives"], pseudo_mode)

        for role, sids in zip(ROLES, (positives, judged_negatives, pseudo_negatives)):
            for rank, sid in enumerate(sids):
                rows.append((query_id, list(sid), role, grade_of[sid] if role == "positive" else 1.0, rank,
                             beam_rank.get(sid, -1)))
    return pd.DataFrame(rows, columns=["query_id", "sid", "role", "weight", "rank", "beam_rank"])


def view_queries(prepared: PreparedDataset, mining: dict, views: ViewConfig, seed: int) -> pd.DataFrame:
    """The view queries of `mining["view_items"]` items no training query reaches (module docstring).

    Returns query_id (VIEW_PREFIX + item_id), item_id, item_row (items row order) and text (one
    of the item's query-like views, drawn with the items under `seed`), in item row order.
    """
    count = int(mining["view_items"])
    if count < 0:
        raise ValueError(f"align.mining.view_items must be >= 0, got {count}")
    columns = ["query_id", "item_id", "item_row", "text"]
    if count == 0:
        return pd.DataFrame(columns=columns)
    if views.views < 1:
        raise ValueError(f"align.mining.view_items = {count} needs sft.indexing_views.views >= 1, got {views.views}")
    clashing = prepared.queries["query_id"].astype(str).str.startswith(VIEW_PREFIX)
    if clashing.any():
        raise ValueError(f"query ids may not start with {VIEW_PREFIX!r} when align.mining.view_items > 0, e.g. "
                         f"{prepared.queries.loc[clashing, 'query_id'].iloc[0]!r}")
    items = prepared.items.reset_index(drop=True)
    item_ids = items["item_id"].astype(str)
    reached = set(prepared.relevant("train")["item_id"].astype(str))
    unreached = np.flatnonzero(~item_ids.isin(reached).to_numpy())
    rng = np.random.default_rng([seed, count])
    rows = np.sort(rng.choice(unreached, min(count, len(unreached)), replace=False))
    chosen_view = rng.integers(views.views, size=len(rows))
    per_item = query_like_views(items["title"].astype(str).tolist(), views, seed)   # IDF over every title
    return pd.DataFrame({"query_id": [VIEW_PREFIX + item_ids[row] for row in rows], "item_id": item_ids[rows].tolist(),
                         "item_row": rows, "text": [per_item[row][view] for row, view in zip(rows, chosen_view)]},
                        columns=columns)


def mine_view_preferences(views: pd.DataFrame, item_sid: Mapping[str, Sid], beam_sids: Mapping[str, Sequence[Sid]],
                          mining: dict) -> pd.DataFrame:
    """Preference rows of the view queries (`view_queries`), in `mine_preferences`' columns: the
    item's own SID as the positive; with `mining["view_negatives"]`, the view's beam SIDs other than
    it as pseudo-negatives (at most `max_pseudo_negatives`, picked as `pseudo_negatives` says)."""
    with_negatives, count = bool(mining["view_negatives"]), int(mining["max_pseudo_negatives"])
    rows = []
    for query_id, item_id in zip(views["query_id"], views["item_id"]):
        own = tuple(int(c) for c in item_sid[item_id])
        beam = list(dict.fromkeys(tuple(int(c) for c in sid) for sid in beam_sids.get(query_id, ())))
        rows.append((query_id, list(own), "positive", 1.0, 0, beam.index(own) if own in beam else -1))
        if with_negatives:
            others = [sid for sid in beam if sid != own]
            for rank, sid in enumerate(pick_pseudo_negatives(others, count, str(mining["pseudo_negatives"]))):
                rows.append((query_id, list(sid), "pseudo_negative", 1.0, rank, beam.index(sid)))
    return pd.DataFrame(rows, columns=["query_id", "sid", "role", "weight", "rank", "beam_rank"])


def pick_pseudo_negatives(unjudged: list[Sid], count: int, mode: str) -> list[Sid]:
    """`count` of the beam's unjudged SIDs (beam order): the first ones (`beam_top`), or half
    the first and half the last (`pool_edge`), never one twice."""
    if mode == "beam_top" or len(unjudged) <= count:
        return unjudged[:count]
    top = count - count // 2
    return unjudged[:top] + unjudged[len(unjudged) - count // 2:]


def mining_beam_size(mining: dict) -> int:
    """How wide the mining beam is: `beam_size`, or the served pool's `pool_beam_size` for `pool_edge`."""
    return int(mining["pool_beam_size"] if mining["pseudo_negatives"] == "pool_edge" else mining["beam_size"])


def preference_summary(preferences: pd.DataFrame) -> dict[str, float]:
    """Counts for metadata: queries (and how many are view queries), mean sequences per role,
    multi-positive queries, positives worth more than one item, and the share of positives the
    mining beam already holds."""
    per_query = preferences.groupby(["query_id", "role"]).size().unstack(fill_value=0)
    summary = {"n_preference_queries": int(len(per_query)),
               "n_view_queries": int(per_query.index.astype(str).str.startswith(VIEW_PREFIX).sum())}
    for role in ROLES:
        summary[f"mean_{role}s"] = float(per_query[role].mean()) if role in per_query else 0.0
    summary["n_multi_positive_queries"] = int((per_query.get("positive", 0) >= 2).sum())
    positives = preferences[preferences["role"] == "positive"]
    summary["n_multi_item_positives"] = int((positives["weight"] > 1.0).sum())
    summary["positives_in_mining_beam"] = float((positives["beam_rank"] >= 0).mean()) if len(positives) else 0.0
    return summary


@torch.no_grad()
def beam_sids(model: Seq2SeqRetriever, trie: SidTrie, sources: EncoderSources,
              beams: int, batch_size: int, length_penalty: float,
              query_vectors: np.ndarray | None = None) -> list[list[Sid]]:
    """The model's constrained-beam SIDs per query of `sources` (best first), the source of
    pseudo-negatives. `query_vectors`: the queries' SCI vectors, for a model that reads them."""
    device = next(model.parameters()).device
    trie = trie.to(device)
    found: list[list[Sid]] = []
    for start in range(0, len(sources), batch_size):
        inputs, mask = sources.batch(np.arange(start, min(start + batch_size, len(sources))))
        vectors = (None if query_vectors is None else
                   torch.as_tensor(query_vectors[start:start + batch_size], dtype=torch.float32, device=device))
        sid_index, _ = constrained_beam_search(model, inputs.to(device), mask.to(device), trie, beams,
                                               length_penalty, vectors)
        found.extend([[trie.sids[i] for i in row if i >= 0] for row in sid_index.tolist()])
    return found
