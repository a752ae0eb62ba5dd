"""SFT examples: (source text -> target SID) pairs, pre-tokenised into arrays.

Two tasks (DESIGN.md Stage 3):
- retrieval: each training query -> the SID of each of its relevant training items, with
  weight gain(relevance) / gain(scale maximum), so a highly relevant item pulls harder;
- lent queries: a real training query -> the SID of an item no training query reaches but
  that ranks near the top for it (`borrowed.py`, params `sft.borrowed_queries`), with a fixed
  weight; they mix with the retrieval pairs;
- indexing: each item's text -> its own SID, weight 1, for every item (cold items too:
  their only chance to be decodable at all). The text is the full item text on the first
  walk over the items, then each of its query-like views (`views.py`, params
  `sft.indexing_views`) on the following walks, cycling. A model that reads the SCI query
  vector reads f_q(item text) for every view (`sft.indexing_query_vector: title`) or f_q of
  the view's own text (`view`), as short and noisy as a real query's.

A training query's f_q is fitted to its own positives (the towers trained on those pairs: on
Home Depot its Recall@10 is .79 against .50 for a validation query), so a model that reads it
learns to trust the vector more than a new query's earns. `query_vector_dropout` (params
`sft.query_vector_dropout`) zeroes it for that share of the retrieval examples each epoch, so the
model must also route a query from its text.

With a `SciTeacher` (params `sft.sci_distillation`, `distill.py`) each batch also carries the
towers' soft next-token targets along every example's gold SID.

`SftDataset` mixes them per epoch: all retrieval pairs, plus as many indexing pairs as make
up `indexing_ratio` of the epoch, drawn by a seeded walk over a permutation of the items
that continues across epochs (so every item is indexed every ~n_items / n_indexing epochs).
Examples are addressed by (epoch, position), so the order is a pure function of the seed
and the step: the property exact resume and DDP sharding rely on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.schema import PreparedDataset
from ..quantize.table import load_sid_table, load_vocab
from .borrowed import BorrowConfig, bm25_ranks, dense_ranks, lent_pairs
from .distill import SciTeacher
from .inputs import EncoderReader, EncoderSources
from ..text.views import ViewConfig, query_like_views, view_major
from .vocab import BOS, EOS, PAD, SidVocab


def read_sid_table(sids_folder: str | Path, variant: str | None) -> pd.DataFrame:
    """The semantic_ids artifact's table for `variant` (None: the shipped one), item ids as str,
    one SID per item."""
    table = load_sid_table(sids_folder, variant)
    table["item_id"] = table["item_id"].astype(str)
    if table["item_id"].duplicated().any():
        duplicate = table.loc[table["item_id"].duplicated(), "item_id"].iloc[0]
        raise ValueError(f"{sids_folder} ({variant}): item_id {duplicate!r} has more than one SID")
    return table


def vocab_for(sids_folder: str | Path, variant: str | None) -> SidVocab:
    """The decoder vocabulary of a variant: its token ranges per position from vocab.json."""
    return SidVocab(tuple(load_vocab(sids_folder, variant)["codes_per_level"]))


def sid_targets(sids: Sequence[Sequence[int]], vocab: SidVocab, width: int) -> np.ndarray:
    """Target token rows [n, width]: SID tokens, EOS, then PAD."""
    targets = np.full((len(sids), width), PAD, dtype=np.int64)
    for row, sid in enumerate(sids):
        tokens = vocab.encode(sid)
        if len(tokens) > width:
            raise ValueError(f"SID {tuple(sid)} needs {len(tokens)} decoder positions, width is {width}")
        targets[row, :len(tokens)] = tokens
    return targets


@dataclass
class SftTables:
    """Encoder sources and SID targets shared by both tasks.

    `sources` holds every source text's encoder input, in rows: the split's queries, then the
    item texts, then view 1 of every item, view 2, ... (`view_row`)."""

    sources: EncoderSources        # encoder inputs of queries, items, then each view of the items
    n_queries: int
    n_items: int
    n_views: int
    item_targets: np.ndarray       # [n_items, T] SID tokens + EOS + PAD per item
    pair_query: np.ndarray         # [n_pairs] retrieval pairs (judged, then lent): query row
    pair_item: np.ndarray          # [n_pairs] retrieval pairs: item row
    pair_weight: np.ndarray        # [n_pairs] graded weight in (0, 1]
    n_lent: int                    # the last n_lent pairs are lent queries (borrowed.py)
    # SCI query-view vectors f_q for a model with a query-vector memory position, else None:
    query_vectors: np.ndarray | None = None   # [n_queries, d] of the split's queries
    # f_q of the indexing sources: [n_items, d] f_q(item text), which every view of the item reads
    # (sft.indexing_query_vector `title`), or [(1 + n_views) * n_items, d], f_q of each view's own text
    # in view_row order (`view`)
    item_vectors: np.ndarray | None = None

    def view_row(self, view: int, item: np.ndarray) -> np.ndarray:
        """Source rows of view `view` of items `item` (view 0: the item text itself)."""
        return self.n_queries + self.n_items * view + np.asarray(item)

    def view_vectors(self, view: np.ndarray, item: np.ndarray) -> np.ndarray:
        """The query vectors indexing examples (view `view` of item `item`) read."""
        if len(self.item_vectors) == self.n_items:
            return self.item_vectors[item]
        return self.item_vectors[self.view_row(view, item) - self.n_queries]

    @classmethod
    def build(cls, prepared: PreparedDataset, sid_table: pd.DataFrame, vocab: SidVocab, reader: EncoderReader,
              max_dec_len: int, views: ViewConfig, seed: int, borrow: BorrowConfig, bm25_params: dict,
              split: str = "train", sci_vectors: tuple[np.ndarray, np.ndarray] | None = None,
              dense_vectors: tuple[np.ndarray, np.ndarray] | None = None,
              encode_views: Callable[[list[str]], np.ndarray] | None = None) -> "SftTables":
        """`sci_vectors`: (f_q of every query in queries.parquet order, f_q of every item) from the
        sci_towers artifact, for a model that reads query vectors; `dense_vectors`: (the same f_q
        of every query, f_i of every item), for `borrow`'s dense channel; `encode_views`: query
        texts -> f_q, given when each indexing view reads the f_q of its own text (with sci_vectors)."""
        items = prepared.items.reset_index(drop=True)
        sid_by_item = dict(zip(sid_table["item_id"].astype(str), sid_table["sid"]))
        missing = [item for item in items["item_id"].astype(str) if item not in sid_by_item]
        if missing:
            raise ValueError(f"{len(missing)} items have no SID in the table, e.g. {missing[:3]}")
        sids = [tuple(int(code) for code in sid_by_item[item]) for item in items["item_id"].astype(str)]
        view_texts = query_like_views(items["title"].astype(str).tolist(), views, seed)
        queries = prepared.split_queries(split).reset_index(drop=True)
        texts = (queries["text"].astype(str).tolist() + prepared.item_text().tolist()
                 + view_major(view_texts))
        sources = reader.read(texts, desc="SFT sources")
        relevant = prepared.relevant(split)
        query_row = pd.Series(np.arange(len(queries)), index=queries["query_id"].astype(str))
        item_row = pd.Series(np.arange(len(items)), index=items["item_id"].astype(str))
        scale = prepared.scale
        top_gain = float(scale.gain(scale.maximum))
        if top_gain <= 0:
            raise ValueError(f"relevance scale {scale} gives the top grade no gain")
        weight = (scale.gain(relevant["relevance"].to_numpy()) / top_gain).astype(np.float32)
        pair_query = query_row.loc[relevant["query_id"].astype(str)].to_numpy()
        pair_item = item_row.loc[relevant["item_id"].astype(str)].to_numpy()
        lent_query, lent_item = lend_queries(prepared, queries, items, borrow, bm25_params, dense_vectors, split,
                                             query_row, item_row)
        query_vectors = item_vectors = None
        if sci_vectors is not None:
            all_queries, item_vectors = (np.asarray(vectors, dtype=np.float32) for vectors in sci_vectors)
            if len(all_queries) != len(prepared.queries) or len(item_vectors) != len(items):
                raise ValueError(f"SCI vectors for {len(all_queries)} queries and {len(item_vectors)} items; the "
                                 f"dataset has {len(prepared.queries)} and {len(items)}")
            query_vectors = all_queries[prepared.queries["split"].eq(split).to_numpy()]
            if encode_views is not None:
                view_vectors = np.asarray(encode_views(texts[len(queries) + len(items):]), dtype=np.float32)
                item_vectors = np.concatenate([item_vectors, view_vectors])
        elif encode_views is not None:
            raise ValueError("encode_views needs sci_vectors: only a model that reads query vectors reads views' vectors")
        return cls(sources=sources, n_queries=len(queries), n_items=len(items), n_views=views.views,
                   item_targets=sid_targets(sids, vocab, max_dec_len),
                   pair_query=np.concatenate([pair_query, lent_query]),
                   pair_item=np.concatenate([pair_item, lent_item]),
                   pair_weight=np.concatenate([weight, np.full(len(lent_query), borrow.weight, dtype=np.float32)]),
                   n_lent=len(lent_query), query_vectors=query_vectors, item_vectors=item_vectors)


def lend_queries(prepared: PreparedDataset, queries: pd.DataFrame, items: pd.DataFrame, borrow: BorrowConfig,
                 bm25_params: dict, dense_vectors: tuple[np.ndarray, np.ndarray] | None, split: str,
                 query_row: pd.Series, item_row: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, item rows) of the `split` queries lent to unreached items (`borrowed.py`)."""
    if not borrow.enabled:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ranks = []
    if "bm25" in borrow.channels:
        ranks.append(bm25_ranks(queries["text"].astype(str).tolist(), prepared.item_text().tolist(), bm25_params,
                                borrow.depth))
    if "dense" in borrow.channels:
        if dense_vectors is None:
            raise ValueError("sft.borrowed_queries.channels has dense: SftTables.build needs dense_vectors")
        all_queries, item_view = (np.asarray(vectors, dtype=np.float32) for vectors in dense_vectors)
        if len(all_queries) != len(prepared.queries) or len(item_view) != len(items):
            raise ValueError(f"dense vectors for {len(all_queries)} queries and {len(item_view)} items; the dataset "
                             f"has {len(prepared.queries)} and {len(items)}")
        ranks.append(dense_ranks(all_queries[prepared.queries["split"].eq(split).to_numpy()], item_view, borrow.depth))
    judged = prepared.split_judgments(split)
    judged = pd.DataFrame({"query_row": query_row.loc[judged["query_id"].astype(str)].to_numpy(),
                           "item_row": item_row.loc[judged["item_id"].astype(str)].to_numpy()})
    reached = np.zeros(len(items), dtype=bool)
    reached[item_row.loc[prepared.relevant(split)["item_id"].astype(str)].to_numpy()] = True
    return lent_pairs(ranks, judged, reached, borrow.per_item)


class SftDataset:
    """The mixed retrieval + indexing example stream (see module docstring).

    `set_epoch(e)` fixes which items fill the indexing slots of epoch e; `batch(indices)`
    collates examples into model tensors.
    """

    def __init__(self, tables: SftTables, indexing_ratio: float, seed: int, query_vector_dropout: float,
                 teacher: SciTeacher | None = None):
        if not 0.0 <= indexing_ratio < 1.0:
            raise ValueError(f"sft.indexing_ratio must be in [0, 1), got {indexing_ratio}")
        if not 0.0 <= query_vector_dropout <= 1.0:
            raise ValueError(f"sft.query_vector_dropout must be in [0, 1], got {query_vector_dropout}")
        if teacher is not None and tables.query_vectors is None:
            raise ValueError("sft.sci_distillation needs the SCI query vectors (generative.query_vector: true)")
        self.tables, self.seed, self.query_vector_dropout, self.teacher = tables, seed, query_vector_dropout, teacher
        n_pairs, n_items = len(tables.pair_query), tables.n_items
        if n_pairs == 0 and indexing_ratio == 0.0:
            raise ValueError("no retrieval pairs and indexing_ratio 0: nothing to train on")
        self.n_pairs = n_pairs
        self.n_indexing = (int(round(n_pairs * indexing_ratio / (1.0 - indexing_ratio))) if n_pairs
                           else n_items)
        self.item_order = np.random.default_rng(seed).permutation(n_items)
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.n_pairs + self.n_indexing

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.vector_dropped = (np.random.default_rng([self.seed, epoch]).random(self.n_pairs)
                               < self.query_vector_dropout)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        tables = self.tables
        indices = np.asarray(indices, dtype=np.int64)
        is_pair = indices < self.n_pairs
        pair = np.where(is_pair, indices, 0)
        slot = self.epoch * self.n_indexing + (indices - self.n_pairs)
        slot = np.where(is_pair, 0, slot)
        item_for_index = self.item_order[slot % len(self.item_order)]
        item = np.where(is_pair, tables.pair_item[pair], item_for_index)
        # walk w over the items shows view (w mod (1 + n_views)); view 0 is the full item text
        view = (slot // len(self.item_order)) % (1 + tables.n_views)
        source_row = np.where(is_pair, tables.pair_query[pair], tables.view_row(view, item))
        inputs, mask = tables.sources.batch(source_row)
        weight = np.where(is_pair, tables.pair_weight[pair], 1.0)
        batch = collate(inputs, mask, tables.item_targets[item], weight)
        if tables.query_vectors is not None:
            query_vectors = np.where(self.vector_dropped[pair][:, None], 0.0, tables.query_vectors[tables.pair_query[pair]])
            vectors = np.where(is_pair[:, None], query_vectors, tables.view_vectors(view, item))
            batch["query_vectors"] = torch.as_tensor(vectors, dtype=torch.float32)
        if self.teacher is not None:
            batch["teacher"] = self.teacher.targets(batch["query_vectors"], batch["targets"], source_row)
        return batch


def collate(inputs: torch.Tensor, mask: torch.Tensor, targets: np.ndarray, weight: np.ndarray) -> dict[str, torch.Tensor]:
    """Model tensors from encoder sources (`EncoderSources.batch`: cut to the longest source)."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    decoder_input = torch.cat([torch.full((len(targets), 1), BOS, dtype=torch.long), targets[:, :-1]], dim=1)
    decoder_input = decoder_input.masked_fill(decoder_input == EOS, PAD)
    return {
        "inputs": inputs,
        "attention_mask": mask,
        "decoder_input_ids": decoder_input,
        "targets": targets,
        "weight": torch.as_tensor(weight, dtype=torch.float32),
    }
