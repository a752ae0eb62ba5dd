"""Preference tables as tensors, batch sampling, and the policy forward pass over SID sequences.

`PreferenceTensors` holds one training set: per query its encoder input, and a flat list of
C candidate sequences (decoder targets: SID tokens + EOS, PAD after) with their owner query
and role, plus per query the rows of its positives and negatives. A batch encodes each of
its queries once and decodes all of that query's candidates against the shared memory.

Two sampling modes, one per loss form:
- `mlgc`: every mined positive and negative of each query in the batch;
- pairwise (vanilla DPO and the no-MLGC ablation): one positive and one negative per query,
  drawn uniformly by a seeded generator each time the query is visited (the usual DPO data
  format: one (prompt, chosen, rejected) triple). Queries without a negative are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..generative.data import sid_targets
from ..generative.model import Seq2SeqRetriever
from ..generative.vocab import BOS, PAD, SidVocab
from .losses import pair_similarity, token_logprobs


@dataclass
class PreferenceTensors:
    query_ids: list[str]
    input_ids: Tensor           # [Q, S] encoder WordPiece ids
    attention_mask: Tensor      # [Q, S]
    targets: Tensor             # [C, T] decoder targets (SID tokens, EOS, PAD)
    owner: Tensor               # [C] query row of each sequence
    weight: Tensor              # [C] grade weight (positives), 1 (negatives)
    positives: list[Tensor]     # per query: sequence rows, best grade first
    negatives: list[Tensor]     # per query: sequence rows
    reference_logp: Tensor | None = None   # [C, T] frozen reference's token log-probs
    vectors: Tensor | None = None          # [C, d] item vectors for sci_item similarity

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)


@dataclass
class Batch:
    query_rows: Tensor          # [B] rows of PreferenceTensors queries
    rows: Tensor                # [Cb] sequence rows
    local_owner: Tensor         # [Cb] position of each sequence's query in query_rows
    pos_index: Tensor           # [B, P] positions into rows (-1 pads)
    pos_weight: Tensor          # [B, P]
    neg_index: Tensor           # [B, N]


def build_preference_tensors(preferences: pd.DataFrame, vocab: SidVocab, query_ids: list[str],
                             input_ids: Tensor, attention_mask: Tensor, max_dec_len: int,
                             sid_vectors: dict[tuple[int, ...], np.ndarray] | None = None) -> PreferenceTensors:
    """Tensorise the mined table (see `mining.mine_preferences`) for the queries in `query_ids` order.

    `input_ids`/`attention_mask` are the encoder inputs of `query_ids`; `max_dec_len` is the
    decoder's position budget (BOS + tokens), so targets are padded to `max_dec_len - 1`.
    """
    row_of_query = {query_id: row for row, query_id in enumerate(query_ids)}
    missing = sorted(set(preferences["query_id"]) - set(row_of_query))
    if missing:
        raise ValueError(f"{len(missing)} preference queries have no encoder input, e.g. {missing[:5]}")
    width = max_dec_len - 1
    ordered = preferences.assign(_query=preferences["query_id"].map(row_of_query),
                                 _negative=preferences["role"] != "positive")
    ordered = ordered.sort_values(["_query", "_negative", "role", "rank"], kind="stable").reset_index(drop=True)
    targets = torch.from_numpy(sid_targets([tuple(int(code) for code in sid) for sid in ordered["sid"]], vocab, width))
    owner = torch.tensor(ordered["_query"].to_numpy(), dtype=torch.long)
    positives: list[Tensor] = [torch.empty(0, dtype=torch.long) for _ in query_ids]
    negatives: list[Tensor] = [torch.empty(0, dtype=torch.long) for _ in query_ids]
    for (query_row, negative), group in ordered.groupby(["_query", "_negative"], sort=False):
        (negatives if negative else positives)[query_row] = torch.tensor(group.index.to_numpy(), dtype=torch.long)
    vectors = None
    if sid_vectors is not None:
        absent = [list(sid) for sid in ordered["sid"] if tuple(sid) not in sid_vectors]
        if absent:
            raise ValueError(f"{len(absent)} preference SIDs have no item vector, e.g. {absent[:3]}")
        vectors = torch.from_numpy(np.stack([sid_vectors[tuple(sid)] for sid in ordered["sid"]]).astype(np.float32))
    return PreferenceTensors(query_ids=list(query_ids), input_ids=input_ids, attention_mask=attention_mask,
                             targets=targets, owner=owner,
                             weight=torch.tensor(ordered["weight"].to_numpy(), dtype=torch.float32),
                             positives=positives, negatives=negatives, vectors=vectors)


def trainable_queries(data: PreferenceTensors, pairwise: bool) -> np.ndarray:
    """Query rows a sampler visits: with a positive, and (pairwise) a negative too."""
    return np.array([row for row in range(data.n_queries)
                     if len(data.positives[row]) and (len(data.negatives[row]) or not pairwise)], dtype=np.int64)


def make_batch(data: PreferenceTensors, query_rows: np.ndarray, pairwise: bool,
               generator: torch.Generator) -> Batch:
    """Gather the sequences of `query_rows` (all of them, or one sampled pair per query)."""
    chosen_pos, chosen_neg = [], []
    for row in query_rows:
        positives, negatives = data.positives[row], data.negatives[row]
        if pairwise:
            positives = positives[torch.randint(len(positives), (1,), generator=generator)]
            negatives = negatives[torch.randint(len(negatives), (1,), generator=generator)]
        chosen_pos.append(positives)
        chosen_neg.append(negatives)
    rows = torch.cat([torch.cat([p, n]) for p, n in zip(chosen_pos, chosen_neg)])
    local_owner = torch.cat([torch.full((len(p) + len(n),), i, dtype=torch.long)
                             for i, (p, n) in enumerate(zip(chosen_pos, chosen_neg))])
    width_p = max(len(p) for p in chosen_pos)
    width_n = max(1, max(len(n) for n in chosen_neg))
    pos_index = torch.full((len(query_rows), width_p), -1, dtype=torch.long)
    neg_index = torch.full((len(query_rows), width_n), -1, dtype=torch.long)
    start = 0
    for i, (p, n) in enumerate(zip(chosen_pos, chosen_neg)):
        pos_index[i, :len(p)] = torch.arange(start, start + len(p))
        neg_index[i, :len(n)] = torch.arange(start + len(p), start + len(p) + len(n))
        start += len(p) + len(n)
    pos_weight = torch.where(pos_index >= 0, data.weight[rows][pos_index.clamp(min=0)], 0.0)
    return Batch(query_rows=torch.as_tensor(query_rows, dtype=torch.long), rows=rows, local_owner=local_owner,
                 pos_index=pos_index, pos_weight=pos_weight, neg_index=neg_index)


def sequence_forward(model: Seq2SeqRetriever, data: PreferenceTensors, batch: Batch) -> tuple[Tensor, Tensor]:
    """Teacher-forced pass: -> (token log-probs [Cb, T], decoder final hidden at the EOS-predicting position [Cb, d]).

    Each query is encoded once; its sequences attend to that memory.
    """
    device = next(model.parameters()).device
    mask = data.attention_mask[batch.query_rows]
    length = max(int(mask.sum(1).max()), 1)     # cut the encoder input to the batch's longest query
    input_ids = data.input_ids[batch.query_rows, :length].to(device)
    mask = mask[:, :length].to(device)
    owner = batch.local_owner.to(device)
    memory = model.encode(input_ids, mask)
    targets = data.targets[batch.rows].to(device)
    decoder_input = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], dim=1)
    logits, hidden = model.decode(memory[owner], mask[owner], decoder_input)
    eos_position = (targets != PAD).sum(-1) - 1
    at_eos = hidden[torch.arange(len(targets), device=device), eos_position]
    return token_logprobs(logits, targets, PAD), at_eos


@torch.no_grad()
def reference_logprobs(reference: Seq2SeqRetriever, data: PreferenceTensors, batch_queries: int) -> Tensor:
    """The frozen reference's token log-probs of every sequence, computed once ([C, T], on CPU)."""
    was_training = reference.training
    reference.eval()
    out = torch.zeros(data.targets.shape)
    every = np.arange(data.n_queries)
    for start in range(0, data.n_queries, batch_queries):
        rows = every[start:start + batch_queries]
        rows = rows[[len(data.positives[r]) + len(data.negatives[r]) > 0 for r in rows]]
        if len(rows) == 0:
            continue
        batch = make_batch(data, rows, pairwise=False, generator=torch.Generator())
        logp, _ = sequence_forward(reference, data, batch)
        out[batch.rows] = logp.float().cpu()
    reference.train(was_training)
    return out


def with_reference(data: PreferenceTensors, reference_logp: Tensor) -> PreferenceTensors:
    if reference_logp.shape != data.targets.shape:
        raise ValueError(f"reference log-probs {tuple(reference_logp.shape)} != targets {tuple(data.targets.shape)}")
    return replace(data, reference_logp=reference_logp)


def batch_similarity(data: PreferenceTensors, batch: Batch, hidden_at_eos: Tensor, source: str) -> Tensor:
    """RDRW similarity s [B, P, N] of each (positive, negative) pair: cosine of the policy's
    final decoder state at EOS (`hidden`, detached) or of SCI item vectors (`sci_item`)."""
    if source == "hidden":
        vectors = hidden_at_eos.detach()
    elif source == "sci_item":
        if data.vectors is None:
            raise ValueError("align.rdrw.similarity = sci_item but no SCI item vectors were given")
        vectors = data.vectors[batch.rows].to(hidden_at_eos.device)
    else:
        raise ValueError(f"align.rdrw.similarity must be 'hidden' or 'sci_item', got {source!r}")
    pos = vectors[batch.pos_index.clamp(min=0).to(vectors.device)]
    neg = vectors[batch.neg_index.clamp(min=0).to(vectors.device)]
    return pair_similarity(pos, neg)
