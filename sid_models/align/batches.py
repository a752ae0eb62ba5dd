"""Preference tables as tensors, the batch stream, and the policy's scoring pass over SID sequences.

`PreferenceTensors` holds one training set: per query its encoder input, and a flat list of
C candidate sequences (decoder targets: SID tokens + EOS, PAD after) with their owner query,
plus per query the rows of its positives and negatives. A batch encodes each of its queries
once and decodes all of that query's candidates against the shared memory (`SequenceScorer`).

Two sampling modes, one per loss form:
- MLGC: every mined positive and negative of each query in the batch;
- pairwise (vanilla DPO and the no-MLGC ablation): one positive and one negative per query,
  drawn uniformly each time the query is visited (the usual DPO data format: one
  (prompt, chosen, rejected) triple). Queries without a negative are not visited.
The draw is a pure function of (seed, epoch, query), which exact resume and DDP rely on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..generative.data import sid_targets
from ..generative.inputs import EncoderSources
from ..generative.model import Seq2SeqRetriever
from ..generative.vocab import BOS, PAD, SidVocab
from .losses import pair_similarity, token_logprobs


@dataclass
class PreferenceTensors:
    query_ids: list[str]
    sources: EncoderSources     # encoder inputs of the queries, in query_ids order
    targets: Tensor             # [C, T] decoder targets (SID tokens, EOS, PAD)
    owner: Tensor               # [C] query row of each sequence
    weight: Tensor              # [C] grade weight (positives), 1 (negatives)
    positives: list[Tensor]     # per query: sequence rows, best grade first
    negatives: list[Tensor]     # per query: sequence rows
    reference_logp: Tensor | None = None   # [C, T] frozen reference's token log-probs
    vectors: Tensor | None = None          # [C, d] item vectors for sci_item similarity
    query_vectors: Tensor | None = None    # [Q, d] SCI query vectors, for a model that reads them

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)


def build_preference_tensors(preferences: pd.DataFrame, vocab: SidVocab, query_ids: list[str],
                             sources: EncoderSources, max_dec_len: int,
                             sid_vectors: dict[tuple[int, ...], np.ndarray] | None = None,
                             query_vectors: Tensor | None = None) -> PreferenceTensors:
    """Tensorise the mined table (see `mining.mine_preferences`) for the queries in `query_ids` order.

    `sources` are the encoder inputs of `query_ids` (`generative.inputs`); targets are padded to
    the decoder's `max_dec_len` positions (SID codes + EOS; the decoder input is BOS + targets[:-1]).
    `sid_vectors`: SID -> item vector, for the sci_item RDRW similarity.
    """
    row_of_query = {query_id: row for row, query_id in enumerate(query_ids)}
    missing = sorted(set(preferences["query_id"]) - set(row_of_query))
    if missing:
        raise ValueError(f"{len(missing)} preference queries have no encoder input, e.g. {missing[:5]}")
    ordered = preferences.assign(_query=preferences["query_id"].map(row_of_query),
                                 _negative=preferences["role"] != "positive")
    ordered = ordered.sort_values(["_query", "_negative", "role", "rank"], kind="stable").reset_index(drop=True)
    sids = [tuple(int(code) for code in sid) for sid in ordered["sid"]]
    targets = torch.from_numpy(sid_targets(sids, vocab, max_dec_len))
    positives: list[Tensor] = [torch.empty(0, dtype=torch.long) for _ in query_ids]
    negatives: list[Tensor] = [torch.empty(0, dtype=torch.long) for _ in query_ids]
    for (query_row, negative), group in ordered.groupby(["_query", "_negative"], sort=False):
        (negatives if negative else positives)[query_row] = torch.tensor(group.index.to_numpy(), dtype=torch.long)
    vectors = None
    if sid_vectors is not None:
        absent = [sid for sid in sids if sid not in sid_vectors]
        if absent:
            raise ValueError(f"{len(absent)} preference SIDs have no item vector, e.g. {absent[:3]}")
        vectors = torch.from_numpy(np.stack([sid_vectors[sid] for sid in sids]).astype(np.float32))
    if len(sources) != len(query_ids):
        raise ValueError(f"{len(sources)} encoder sources for {len(query_ids)} queries")
    return PreferenceTensors(query_ids=list(query_ids), sources=sources,
                             targets=targets, owner=torch.tensor(ordered["_query"].to_numpy(), dtype=torch.long),
                             weight=torch.tensor(ordered["weight"].to_numpy(), dtype=torch.float32),
                             positives=positives, negatives=negatives, vectors=vectors,
                             query_vectors=query_vectors)


def with_reference(data: PreferenceTensors, reference_logp: Tensor) -> PreferenceTensors:
    if reference_logp.shape != data.targets.shape:
        raise ValueError(f"reference log-probs {tuple(reference_logp.shape)} != targets {tuple(data.targets.shape)}")
    return replace(data, reference_logp=reference_logp)


def trainable_queries(data: PreferenceTensors, pairwise: bool) -> np.ndarray:
    """Query rows a sampler visits: with a positive, and (pairwise) a negative too."""
    return np.array([row for row in range(data.n_queries)
                     if len(data.positives[row]) and (len(data.negatives[row]) or not pairwise)], dtype=np.int64)


def make_batch(data: PreferenceTensors, query_rows, pairwise: bool, seed: int = 0, epoch: int = 0) -> dict[str, Tensor]:
    """Model tensors for `query_rows`: all their sequences, or one drawn (positive, negative) per query.

    Keys: inputs/attention_mask (the queries' encoder inputs, cut to the longest), targets [Cb, T],
    local_owner [Cb] (batch position of each sequence's query), pos_index/pos_weight [B, P]
    and neg_index [B, N] (positions into the batch's sequences, -1 pads), and when present
    reference_logp [Cb, T] and vectors [Cb, d].
    """
    query_rows = np.asarray(query_rows, dtype=np.int64)
    chosen_pos, chosen_neg = [], []
    for row in query_rows:
        positives, negatives = data.positives[row], data.negatives[row]
        if pairwise:
            if not len(negatives):
                raise ValueError(f"pairwise batch: query {data.query_ids[row]!r} has no negative")
            rng = np.random.default_rng([seed, epoch, int(row)])
            positives = positives[int(rng.integers(len(positives)))].reshape(1)
            negatives = negatives[int(rng.integers(len(negatives)))].reshape(1)
        chosen_pos.append(positives)
        chosen_neg.append(negatives)
    rows = torch.cat([torch.cat([p, n]) for p, n in zip(chosen_pos, chosen_neg)])
    local_owner = torch.cat([torch.full((len(p) + len(n),), i, dtype=torch.long)
                             for i, (p, n) in enumerate(zip(chosen_pos, chosen_neg))])
    pos_index = torch.full((len(query_rows), max(len(p) for p in chosen_pos)), -1, dtype=torch.long)
    neg_index = torch.full((len(query_rows), max(1, max(len(n) for n in chosen_neg))), -1, dtype=torch.long)
    start = 0
    for i, (p, n) in enumerate(zip(chosen_pos, chosen_neg)):
        pos_index[i, :len(p)] = torch.arange(start, start + len(p))
        neg_index[i, :len(n)] = torch.arange(start + len(p), start + len(p) + len(n))
        start += len(p) + len(n)
    inputs, mask = data.sources.batch(query_rows)
    batch = {
        "inputs": inputs,
        "attention_mask": mask,
        "targets": data.targets[rows],
        "local_owner": local_owner,
        "pos_index": pos_index,
        "pos_weight": torch.where(pos_index >= 0, data.weight[rows][pos_index.clamp(min=0)], 0.0),
        "neg_index": neg_index,
    }
    if data.reference_logp is not None:
        batch["reference_logp"] = data.reference_logp[rows]
    if data.vectors is not None:
        batch["vectors"] = data.vectors[rows]
    if data.query_vectors is not None:
        batch["query_vectors"] = data.query_vectors[query_rows]
    return batch


class PreferenceDataset:
    """The batch stream `shared.training.train_loop` consumes: examples are trainable queries."""

    def __init__(self, data: PreferenceTensors, pairwise: bool, seed: int):
        self.data, self.pairwise, self.seed = data, pairwise, seed
        self.rows = trainable_queries(data, pairwise)
        if len(self.rows) == 0:
            raise ValueError("no query has a positive" + (" and a negative" if pairwise else ""))
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch(self, indices) -> dict[str, Tensor]:
        return make_batch(self.data, self.rows[np.asarray(indices, dtype=np.int64)], self.pairwise, self.seed,
                          self.epoch)


class SequenceScorer(nn.Module):
    """Wraps the policy so one `forward` call (what DDP hooks into) scores many sequences per query.

    forward -> (token log-probs [Cb, T], decoder final hidden at the position that predicts
    EOS [Cb, d], i.e. the state that has read the whole SID).
    """

    def __init__(self, policy: Seq2SeqRetriever):
        super().__init__()
        self.policy = policy

    def forward(self, inputs: Tensor, attention_mask: Tensor, local_owner: Tensor,
                targets: Tensor, query_vectors: Tensor | None = None) -> tuple[Tensor, Tensor]:
        memory, memory_mask = self.policy.encode(inputs, attention_mask, query_vectors)
        decoder_input = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], dim=1)
        logits, hidden = self.policy.decode(memory[local_owner], memory_mask[local_owner], decoder_input)
        eos_position = (targets != PAD).sum(-1) - 1
        at_eos = hidden[torch.arange(len(targets), device=targets.device), eos_position]
        return token_logprobs(logits, targets, PAD), at_eos


def score_batch(scorer: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    return scorer(batch["inputs"], batch["attention_mask"], batch["local_owner"], batch["targets"],
                  batch.get("query_vectors"))


@torch.no_grad()
def reference_logprobs(reference: Seq2SeqRetriever, data: PreferenceTensors, batch_queries: int) -> Tensor:
    """The frozen reference's token log-probs of every sequence, computed once ([C, T], on CPU)."""
    scorer = SequenceScorer(reference).eval()
    device = next(reference.parameters()).device
    out = torch.zeros(data.targets.shape)
    rows = [row for row in range(data.n_queries) if len(data.positives[row]) + len(data.negatives[row])]
    for start in range(0, len(rows), batch_queries):
        chunk = rows[start:start + batch_queries]
        batch = make_batch(data, chunk, pairwise=False)
        logp, _ = score_batch(scorer, {key: value.to(device) for key, value in batch.items()})
        sequence_rows = torch.cat([torch.cat([data.positives[r], data.negatives[r]]) for r in chunk])
        out[sequence_rows] = logp.float().cpu()
    return out


def batch_similarity(batch: dict[str, Tensor], hidden_at_eos: Tensor, source: str) -> Tensor:
    """RDRW similarity s [B, P, N] of each (positive, negative) pair: cosine of the policy's
    final decoder state at EOS (`hidden`, detached) or of SCI item vectors (`sci_item`)."""
    if source == "hidden":
        vectors = hidden_at_eos.detach()
    elif source == "sci_item":
        if "vectors" not in batch:
            raise ValueError("align.rdrw.similarity = sci_item but no SCI item vectors were given")
        vectors = batch["vectors"]
    else:
        raise ValueError(f"align.rdrw.similarity must be 'hidden' or 'sci_item', got {source!r}")
    return pair_similarity(vectors[batch["pos_index"].clamp(min=0)], vectors[batch["neg_index"].clamp(min=0)])


def pair_mask(batch: dict[str, Tensor]) -> Tensor:
    return (batch["pos_index"] >= 0).unsqueeze(-1) & (batch["neg_index"] >= 0).unsqueeze(1)
