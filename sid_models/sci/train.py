"""Training of the SCI dual towers: batches, objective, early stopping, validation recall.

A training example is one relevant (query, item) judgment of the training split, weighted
by its graded gain (gain(r) / gain(max) when `graded_weights`, else 1). Each batch holds B
such pairs; for every pair up to H judged items of the same query graded below
`hard_negative_max_relevance` (capped at, and by default equal to, the dataset's relevance
threshold) are added as hard negatives; in-batch items relevant to another pair's query are
masked as accidental hits. The objective is documented in `losses.py`. After every epoch, Recall@K of exact
search f_q(valid query)·f_i(item) over the whole catalogue decides early stopping; the
best epoch's weights are kept (epoch 0 = the untrained towers ≈ MiniLM).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import faiss
import numpy as np
import pandas as pd
import torch

from .. import tracking
from ..data.schema import PreparedDataset
from ..shared.metrics import RECALL_KS, evaluate
from .index import FlatIndex, dense_rankings
from .losses import consistency, info_nce, preservation
from .towers import DualTower, TowerConfig, initial_projection


@dataclass
class TrainConfig:
    """Tower training settings: params `sci.train` plus the seed (no defaults: params.yaml is the one source)."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    temperature: float
    lambda_swap: float
    lambda_cons: float
    lambda_preserve: float
    preserve_sample: int                  # random catalogue items per batch for L_pres (cold items included)
    hard_negatives: int
    hard_negative_max_relevance: float | None
    graded_weights: bool
    patience: int
    eval_k: int
    init_projection: str
    seed: int
    threads: int

    @classmethod
    def from_params(cls, sci_params: dict, seed: int) -> "TrainConfig":
        return cls(seed=seed, **sci_params["train"])


@dataclass
class TrainingData:
    """Row-indexed training pairs, hard negatives and positive sets (rows of items/queries parquet)."""

    pair_queries: np.ndarray
    pair_items: np.ndarray
    pair_weights: np.ndarray
    positive_keys: np.ndarray            # sorted query_row * n_items + item_row of relevant train pairs
    negative_offsets: np.ndarray         # CSR over query rows into negative_items
    negative_items: np.ndarray
    n_items: int

    @classmethod
    def build(cls, prepared: PreparedDataset, config: TrainConfig) -> "TrainingData":
        item_row = pd.Series(np.arange(len(prepared.items)), index=prepared.items["item_id"].to_numpy())
        query_row = pd.Series(np.arange(len(prepared.queries)), index=prepared.queries["query_id"].to_numpy())
        judged = prepared.split_judgments("train")
        queries = query_row.reindex(judged["query_id"].to_numpy()).to_numpy()
        items = item_row.reindex(judged["item_id"].to_numpy()).to_numpy()
        if np.isnan(queries.astype(float)).any() or np.isnan(items.astype(float)).any():
            raise ValueError("training judgments reference query or item ids missing from the prepared tables")
        queries, items = queries.astype(np.int64), items.astype(np.int64)
        relevance = judged["relevance"].to_numpy(dtype=np.float64)
        relevant = judged["relevant"].to_numpy(dtype=bool)
        if not relevant.any():
            raise ValueError("the training split has no relevant judgment: nothing to train the towers on")
        n_items = len(prepared.items)
        scale = prepared.scale
        weights = (scale.gain(relevance[relevant]) / scale.gain(scale.maximum) if config.graded_weights
                   else np.ones(int(relevant.sum())))
        # Never above the threshold: a relevant item must not become a negative on any scale.
        cutoff = (scale.threshold if config.hard_negative_max_relevance is None
                  else min(config.hard_negative_max_relevance, scale.threshold))
        negative = relevance < cutoff
        order = np.argsort(queries[negative], kind="stable")
        negative_queries, negative_items = queries[negative][order], items[negative][order]
        offsets = np.searchsorted(negative_queries, np.arange(len(prepared.queries) + 1))
        return cls(pair_queries=queries[relevant], pair_items=items[relevant],
                   pair_weights=weights.astype(np.float32),
                   positive_keys=np.unique(queries[relevant] * n_items + items[relevant]),
                   negative_offsets=offsets, negative_items=negative_items, n_items=n_items)

    def accidental_hits(self, batch_queries: np.ndarray, batch_items: np.ndarray) -> np.ndarray:
        """[B, B] bool: item j of the batch is relevant to the query of pair b."""
        keys = batch_queries[:, None] * self.n_items + batch_items[None, :]
        return np.isin(keys, self.positive_keys)

    def sample_negatives(self, batch_queries: np.ndarray, per_query: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """([B, H] item rows, [B, H] mask) of up to H judged non-relevant items per pair's query."""
        rows = np.zeros((len(batch_queries), per_query), dtype=np.int64)
        mask = np.zeros((len(batch_queries), per_query), dtype=bool)
        for b, query in enumerate(batch_queries):
            pool = self.negative_items[self.negative_offsets[query]:self.negative_offsets[query + 1]]
            if len(pool):
                chosen = rng.permutation(pool)[:per_query]
                rows[b, :len(chosen)] = chosen
                mask[b, :len(chosen)] = True
        return rows, mask


@dataclass
class TrainResult:
    towers: DualTower
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def objective(towers: DualTower, anchor_projection: torch.Tensor, query_base: torch.Tensor,
              item_base: torch.Tensor, negative_base: torch.Tensor, negative_mask: torch.Tensor,
              accidental: torch.Tensor, weights: torch.Tensor, preserve_base: torch.Tensor | None,
              config: TrainConfig) -> dict[str, torch.Tensor]:
    """The loss terms of one batch (see losses.py); `total` is what the optimiser minimises."""
    batch, hard, dim = negative_base.shape
    f_q, f_i = towers.query_tower, towers.item_tower
    query_q, query_i = f_q(query_base), f_i(query_base)
    item_q, item_i = f_q(item_base), f_i(item_base)
    negatives = negative_base.reshape(batch * hard, dim)
    negative_i = f_i(negatives).reshape(batch, hard, -1) if hard else None
    terms = {"main": info_nce(query_q, item_i, weights, config.temperature, accidental, negative_i, negative_mask)}
    total = terms["main"]
    if config.lambda_swap > 0:
        negative_q = f_q(negatives).reshape(batch, hard, -1) if hard else None
        terms["swap"] = info_nce(query_i, item_q, weights, config.temperature, accidental, negative_q, negative_mask)
        total = total + config.lambda_swap * terms["swap"]
    if config.lambda_cons > 0:
        terms["cons"] = consistency(torch.cat([query_q, item_q]), torch.cat([query_i, item_i]))
        total = total + config.lambda_cons * terms["cons"]
    if config.lambda_preserve > 0 and preserve_base is not None:
        anchor = torch.nn.functional.normalize(preserve_base @ anchor_projection.T, dim=-1)
        terms["pres"] = preservation(f_q(preserve_base), anchor) + preservation(f_i(preserve_base), anchor)
        total = total + config.lambda_preserve * terms["pres"]
    terms["total"] = total
    return terms


def validation_metrics(towers: DualTower, prepared: PreparedDataset, item_base: np.ndarray,
                       query_base: np.ndarray, split: str, k: int) -> dict[str, float]:
    """Exact-search metrics of the towers on one split (every metric of shared.metrics.evaluate)."""
    queries = prepared.split_queries(split)
    rows = queries.index.to_numpy()
    if not len(rows):
        raise ValueError(f"split {split!r} has no queries to validate the towers on")
    index = FlatIndex(towers.encode_items(item_base))
    ranked = dense_rankings(towers.encode_queries(query_base[rows]), index, k,
                            queries["query_id"].tolist(), prepared.items["item_id"].tolist())
    segment = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    return evaluate(ranked, prepared.split_judgments(split), prepared.scale, segment)


def limit_threads(threads: int) -> None:
    """Cap torch and faiss (OpenMP) threads for this process.

    On a CPU shared with other jobs, OpenMP workers spinning at barriers make small matrix
    work many times slower than one thread (measured ~3x on a tower step, ~20x on an SVD on
    the project's 2-core machine under load), so training defaults to one thread.
    """
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def train_towers(prepared: PreparedDataset, item_base: np.ndarray, query_base: np.ndarray,
                 tower_config: TowerConfig, config: TrainConfig,
                 log: Callable[[str], None] = lambda message: None) -> TrainResult:
    """Train f_q and f_i; returns the best epoch's towers by validation Recall@`eval_k`."""
    if len(item_base) != len(prepared.items) or len(query_base) != len(prepared.queries):
        raise ValueError(f"base features ({len(item_base)} items, {len(query_base)} queries) do not match the "
                         f"prepared dataset ({len(prepared.items)} items, {len(prepared.queries)} queries)")
    started = time.perf_counter()
    limit_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    data = TrainingData.build(prepared, config)
    train_queries = np.unique(data.pair_queries)
    projection = initial_projection(np.concatenate([item_base, query_base[train_queries]]),
                                    tower_config.out_dim, config.init_projection, config.seed)
    towers = DualTower(tower_config, projection)
    optimiser = torch.optim.AdamW([p for p in towers.parameters() if p.requires_grad],
                                  lr=config.learning_rate, weight_decay=config.weight_decay)
    items_t = torch.from_numpy(np.ascontiguousarray(item_base, dtype=np.float32))
    queries_t = torch.from_numpy(np.ascontiguousarray(query_base, dtype=np.float32))
    metric = f"recall@{config.eval_k}"

    def validate(epoch: int, loss: dict[str, float]) -> dict[str, float]:
        valid = validation_metrics(towers, prepared, item_base, query_base, "valid",
                                   max(config.eval_k, max(RECALL_KS)))
        record = {"epoch": epoch, **{f"loss_{k}": v for k, v in loss.items()},
                  **{f"valid_{k}": v for k, v in valid.items() if not k.startswith("n_")}}
        tracking.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        log(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        return record

    history = [validate(0, {})]
    best_epoch, best_score = 0, history[0][f"valid_{metric}"]
    best_state = copy.deepcopy(towers.state_dict())
    for epoch in range(1, config.epochs + 1):
        towers.train()
        order = rng.permutation(len(data.pair_queries))
        sums: dict[str, float] = {}
        n_batches = 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2:
                continue
            q_rows, i_rows = data.pair_queries[batch], data.pair_items[batch]
            negative_rows, negative_mask = data.sample_negatives(q_rows, config.hard_negatives, rng)
            preserve = (items_t[torch.from_numpy(rng.integers(0, data.n_items, config.preserve_sample))]
                        if config.lambda_preserve > 0 else None)
            terms = objective(towers, projection, queries_t[q_rows], items_t[i_rows],
                              items_t[torch.from_numpy(negative_rows.reshape(-1))].reshape(len(batch), config.hard_negatives, -1),
                              torch.from_numpy(negative_mask), torch.from_numpy(data.accidental_hits(q_rows, i_rows)),
                              torch.from_numpy(data.pair_weights[batch]), preserve, config)
            optimiser.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimiser.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            n_batches += 1
        if not np.isfinite(sums.get("total", np.nan)):
            raise FloatingPointError(f"tower training diverged at epoch {epoch}: loss {sums.get('total')}")
        record = validate(epoch, {name: value / n_batches for name, value in sums.items()})
        history.append(record)
        if record[f"valid_{metric}"] > best_score:
            best_epoch, best_score = epoch, record[f"valid_{metric}"]
            best_state = copy.deepcopy(towers.state_dict())
        elif epoch - best_epoch >= config.patience:
            log(f"early stop after epoch {epoch}: best {metric} {best_score:.4f} at epoch {best_epoch}")
            break
    towers.load_state_dict(best_state)
    towers.eval()
    best_valid = {key.removeprefix("valid_"): value for key, value in history[best_epoch].items()
                  if key.startswith("valid_")}
    return TrainResult(towers=towers, best_epoch=best_epoch, best_valid=best_valid, history=history,
                       seconds=time.perf_counter() - started)
