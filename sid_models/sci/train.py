"""Training of the SCI dual towers: batches, objective, early stopping, validation recall.

A training example is one relevant (query, item) judgment of the training split, weighted
by its graded gain (gain(r) / gain(max) when `graded_weights`, else 1), or, when
`pseudo_queries.per_pair` > 0, a pseudo-query: one of the query-like views of an item's title
(`text/views.py`, every item, cold ones included) standing for that item, with weight
`pseudo_queries.weight`; each epoch draws per_pair × (judged pairs) of them afresh, so the
items no training query reaches get query-shaped examples too. Each batch holds B
such pairs; for every pair up to H judged items of the same query graded below
`hard_negative_max_relevance` (capped at, and by default equal to, the dataset's relevance
threshold) are added as hard negatives; in-batch items relevant to another pair's query are
masked as accidental hits. The objective is documented in `losses.py`. After every epoch, Recall@K of exact
search f_q(valid query)·f_i(item) over the whole catalogue decides early stopping; the
best epoch's weights are kept (epoch 0 = the untrained towers ≈ MiniLM).

Three tower kinds (`sci.tower.kind`) train through this one loop: `mlp` (towers.py) reads the
MiniLM sentence vectors, `minilm` (text_tower.py) reads the token states of MiniLM's frozen
lower layers and fine-tunes a copy of its top layers per tower, `mlp_lexical`
(lexical_tower.py) reads the sentence vectors and the tf-idf terms of the text and adds a
learned embedding of the terms to the MLP tower. `new_towers` builds any of them,
`tower_inputs` gives what it reads.
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
from ..params import deep_merge
from ..data.schema import PreparedDataset
from ..shared.metrics import RECALL_KS, evaluate
from .index import FlatIndex, dense_rankings
from .losses import consistency, info_nce, preservation, triplet
from ..text.encoder import TextEncoder
from ..text.states import TokenStates
from ..text.views import ViewConfig, query_like_views
from ..lexical.terms import TermVectoriser
from .lexical_tower import LexicalDualTower, LexicalInputs, LexicalTowerConfig, initial_embedding
from .text_tower import TextDualTower, TextTowerConfig
from .towers import DualTower, TowerConfig, initial_projection

TOWER_KINDS = ("mlp", "minilm", "mlp_lexical")
CONTRAST_LOSSES = ("info_nce", "triplet")


@dataclass
class TrainConfig:
    """Tower training settings: params `sci.train` plus the seed (no defaults: params.yaml is the one source)."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    loss: str                             # info_nce | triplet (losses.py)
    temperature: float                    # info_nce
    triplet_margin: float                 # triplet's δ
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
    pseudo_queries: dict                  # per_pair, weight and the views' settings (ViewConfig)
    seed: int
    threads: int

    def __post_init__(self):
        ViewConfig.from_params(self.pseudo_queries, "sci.train.pseudo_queries")
        if not self.pseudo_queries["per_pair"] >= 0 or not self.pseudo_queries["weight"] > 0:
            raise ValueError(f"sci.train.pseudo_queries needs per_pair >= 0 and weight > 0, got {self.pseudo_queries}")
        if self.loss not in CONTRAST_LOSSES:
            raise ValueError(f"sci.train.loss must be one of {list(CONTRAST_LOSSES)}, got {self.loss!r}")
        if self.loss == "triplet" and not self.triplet_margin > 0:
            raise ValueError(f"sci.train.triplet_margin must be > 0, got {self.triplet_margin}")

    @classmethod
    def from_params(cls, sci_params: dict, seed: int) -> "TrainConfig":
        """params `sci.train`, with the `train` overrides of the chosen tower kind's row merged over it."""
        row = sci_params["tower"]["kinds"][sci_params["tower"]["kind"]]
        return cls(seed=seed, **deep_merge(sci_params["train"], row.get("train", {})))


@dataclass
class TrainingData:
    """Row-indexed training pairs, hard negatives and positive sets (rows of items/queries parquet;
    pseudo-query j is query row n_queries + j)."""

    pair_queries: np.ndarray
    pair_items: np.ndarray
    pair_weights: np.ndarray
    positive_keys: np.ndarray            # sorted query_row * n_items + item_row of relevant train pairs
    negative_offsets: np.ndarray         # CSR over query rows into negative_items
    negative_items: np.ndarray
    n_items: int
    pseudo_queries: np.ndarray           # query rows of the pseudo-queries (empty when off)
    pseudo_items: np.ndarray
    pseudo_weight: float
    pseudo_per_pair: float

    def epoch_pairs(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query rows, item rows, weights) of one epoch, shuffled: every judged pair, plus
        round(pseudo_per_pair × judged pairs) pseudo-queries drawn without replacement."""
        queries, items, weights = self.pair_queries, self.pair_items, self.pair_weights
        drawn = min(int(round(self.pseudo_per_pair * len(queries))), len(self.pseudo_queries))
        if drawn:
            chosen = rng.choice(len(self.pseudo_queries), size=drawn, replace=False)
            queries = np.concatenate([queries, self.pseudo_queries[chosen]])
            items = np.concatenate([items, self.pseudo_items[chosen]])
            weights = np.concatenate([weights, np.full(drawn, self.pseudo_weight, dtype=np.float32)])
        order = rng.permutation(len(queries))
        return queries[order], items[order], weights[order]

    @classmethod
    def build(cls, prepared: PreparedDataset, config: TrainConfig,
              pseudo_items: np.ndarray | None = None) -> "TrainingData":
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
        pseudo_items = np.zeros(0, dtype=np.int64) if pseudo_items is None else pseudo_items.astype(np.int64)
        pseudo_queries = len(prepared.queries) + np.arange(len(pseudo_items), dtype=np.int64)
        # pseudo-queries have no judged negatives: their CSR rows are empty
        offsets = np.searchsorted(negative_queries, np.arange(len(prepared.queries) + len(pseudo_items) + 1))
        return cls(pair_queries=queries[relevant], pair_items=items[relevant],
                   pair_weights=weights.astype(np.float32),
                   positive_keys=np.unique(np.concatenate([queries[relevant] * n_items + items[relevant],
                                                           pseudo_queries * n_items + pseudo_items])),
                   negative_offsets=offsets, negative_items=negative_items, n_items=n_items,
                   pseudo_queries=pseudo_queries, pseudo_items=pseudo_items,
                   pseudo_weight=float(config.pseudo_queries["weight"]),
                   pseudo_per_pair=float(config.pseudo_queries["per_pair"]))

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
    towers: "Towers"
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


Towers = DualTower | TextDualTower | LexicalDualTower
# MiniLM sentence vectors (mlp towers), token states (minilm towers) or vectors and terms (mlp_lexical towers)
TowerInputs = np.ndarray | TokenStates | LexicalInputs
MISALIGNMENT_SAMPLE = 4096                 # rows per kind of text the misalignment means are taken over


def gather(inputs: TowerInputs, rows: np.ndarray):
    """What a tower's forward takes for text `rows`: a [B, d] tensor, padded (states, mask), or
    (vectors, term ids, offsets, term weights)."""
    if isinstance(inputs, (TokenStates, LexicalInputs)):
        return inputs.batch(rows)
    return torch.from_numpy(np.ascontiguousarray(inputs[rows], dtype=np.float32))


def subset(inputs: TowerInputs, rows: np.ndarray) -> TowerInputs:
    return inputs.subset(rows) if isinstance(inputs, (TokenStates, LexicalInputs)) else inputs[rows]


def stack(first: TowerInputs, second: TowerInputs) -> TowerInputs:
    """The rows of `first`, then those of `second`."""
    return first.stacked(second) if isinstance(first, (TokenStates, LexicalInputs)) else np.concatenate([first, second])


@dataclass
class PseudoQueries:
    """Query-like views of the item titles as tower inputs: text j stands for item row `items[j]`."""

    inputs: TowerInputs
    items: np.ndarray


def contrast(anchors: torch.Tensor, positives: torch.Tensor, weights: torch.Tensor, config: TrainConfig,
             accidental: torch.Tensor, negatives: torch.Tensor | None, negative_mask: torch.Tensor) -> torch.Tensor:
    """The query-item contrast `config.loss` names: info_nce (temperature) or triplet (margin)."""
    if config.loss == "info_nce":
        return info_nce(anchors, positives, weights, config.temperature, accidental, negatives, negative_mask)
    return triplet(anchors, positives, weights, config.triplet_margin, accidental, negatives, negative_mask)


def objective(towers: Towers, items: TowerInputs, queries: TowerInputs, query_rows: np.ndarray,
              item_rows: np.ndarray, negative_rows: np.ndarray, negative_mask: torch.Tensor,
              accidental: torch.Tensor, weights: torch.Tensor, preserve_rows: np.ndarray | None,
              anchor: torch.Tensor | None, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The loss terms of one batch (see losses.py); `total` is what the optimiser minimises.

    `negative_rows` [B, H] are item rows; `anchor` [n_items, d] the untrained towers' item vectors f_0.
    """
    batch, hard = negative_rows.shape
    f_q, f_i = towers.query_tower, towers.item_tower
    query_base, item_base = gather(queries, query_rows), gather(items, item_rows)
    query_q, item_i = f_q(query_base), f_i(item_base)
    negatives = gather(items, negative_rows.reshape(-1)) if hard else None
    negative_i = f_i(negatives).reshape(batch, hard, -1) if hard else None
    terms = {"main": contrast(query_q, item_i, weights, config, accidental, negative_i, negative_mask)}
    total = terms["main"]
    if config.lambda_swap > 0 or config.lambda_cons > 0:
        query_i, item_q = f_i(query_base), f_q(item_base)
    if config.lambda_swap > 0:
        negative_q = f_q(negatives).reshape(batch, hard, -1) if hard else None
        terms["swap"] = contrast(query_i, item_q, weights, config, accidental, negative_q, negative_mask)
        total = total + config.lambda_swap * terms["swap"]
    if config.lambda_cons > 0:
        terms["cons"] = consistency(torch.cat([query_q, item_q]), torch.cat([query_i, item_i]))
        total = total + config.lambda_cons * terms["cons"]
    if config.lambda_preserve > 0 and preserve_rows is not None:
        preserve_base, target = gather(items, preserve_rows), anchor[torch.from_numpy(preserve_rows)]
        terms["pres"] = preservation(f_q(preserve_base), target) + preservation(f_i(preserve_base), target)
        total = total + config.lambda_preserve * terms["pres"]
    terms["total"] = total
    return terms


def validation_metrics(towers: Towers, prepared: PreparedDataset, item_base: TowerInputs,
                       query_base: TowerInputs, split: str, k: int) -> dict[str, float]:
    """Exact-search metrics of the towers on one split (every metric of shared.metrics.evaluate)."""
    queries = prepared.split_queries(split)
    rows = queries.index.to_numpy()
    if not len(rows):
        raise ValueError(f"split {split!r} has no queries to validate the towers on")
    index = FlatIndex(towers.encode_items(item_base))
    ranked = dense_rankings(towers.encode_queries(subset(query_base, rows)), index, k,
                            queries["query_id"].tolist(), prepared.items["item_id"].tolist())
    segment = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    return evaluate(ranked, prepared.split_judgments(split), prepared.scale, segment)


def misalignment(towers: Towers, item_base: TowerInputs, query_base: TowerInputs) -> dict[str, float]:
    """How far the two towers disagree on the same input, what the input swap acts on.

    For x over catalogue items and over queries (a fixed sample of MISALIGNMENT_SAMPLE each
    when there are more): mean ‖f_q(x) − f_i(x)‖ (`*_l2`, 0 when the towers coincide, at most
    2) and mean cos(f_q(x), f_i(x)) (`*_cos`, 1 when they coincide).
    """
    result = {}
    for name, base in (("items", item_base), ("queries", query_base)):
        if len(base) > MISALIGNMENT_SAMPLE:
            base = subset(base, np.sort(np.random.default_rng(0).choice(len(base), MISALIGNMENT_SAMPLE, replace=False)))
        query_view, item_view = towers.encode_queries(base), towers.encode_items(base)
        result[f"misalign_{name}_l2"] = float(np.linalg.norm(query_view - item_view, axis=1).mean())
        result[f"misalign_{name}_cos"] = float(np.sum(query_view * item_view, axis=1).mean())
    return result


def limit_threads(threads: int) -> None:
    """Cap torch and faiss (OpenMP) threads for this process.

    On a CPU shared with other jobs, OpenMP workers spinning at barriers make small matrix
    work many times slower than one thread (measured ~3x on a tower step, ~20x on an SVD on
    the project's 2-core machine under load), so training defaults to one thread.
    """
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def new_towers(tower_params: dict, text_params: dict, prepared: PreparedDataset, item_base: np.ndarray,
               query_base: np.ndarray, config: TrainConfig) -> Towers:
    """Untrained towers of kind `sci.tower.kind` (both towers equal to MiniLM zero-shot), seeded."""
    kind = tower_params["kind"]
    if kind not in TOWER_KINDS:
        raise ValueError(f"sci.tower.kind must be one of {list(TOWER_KINDS)}, got {kind!r}")
    settings = {key: value for key, value in tower_params["kinds"][kind].items() if key != "train"}
    limit_threads(config.threads)  # the projection's eigensolver is not bit-stable across thread counts
    torch.manual_seed(config.seed)
    if kind == "minilm":
        return TextDualTower(TextTowerConfig(model_name=text_params["model_name"], **settings))
    # the projection preserves the geometry of the catalogue and of the queries training reaches
    train_queries = np.unique(TrainingData.build(prepared, config).pair_queries)
    projection = initial_projection(np.concatenate([item_base, query_base[train_queries]]), settings["out_dim"],
                                    config.init_projection, config.seed)
    if kind == "mlp_lexical":
        vectoriser = TermVectoriser.fit(prepared.item_text().tolist(), settings["stemmer"], settings["stopwords"])
        lexical = LexicalTowerConfig(in_dim=int(item_base.shape[1]), vocabulary_size=len(vectoriser), **settings)
        return LexicalDualTower(lexical, vectoriser, projection, initial_embedding(lexical, config.seed))
    return DualTower(TowerConfig(in_dim=int(item_base.shape[1]), **settings), projection)


def tower_inputs(towers: Towers, prepared: PreparedDataset, item_base: np.ndarray, query_base: np.ndarray,
                 text_params: dict) -> tuple[TowerInputs, TowerInputs]:
    """(item inputs, query inputs) the towers read (`read_texts` of each tower kind), given the
    MiniLM sentence vectors of the items and of the queries."""
    return (towers.read_texts(prepared.item_text().tolist(), lambda _: item_base, text_params, "items"),
            towers.read_texts(prepared.queries["text"].tolist(), lambda _: query_base, text_params, "queries"))


def pseudo_query_inputs(towers: Towers, prepared: PreparedDataset, config: TrainConfig,
                        text_params: dict) -> PseudoQueries | None:
    """The pseudo-queries of `config.pseudo_queries` (None when per_pair is 0), read as the towers
    read text (MiniLM sentence vectors and token states are both cached under text.cache_dir)."""
    if not config.pseudo_queries["per_pair"]:
        return None
    views = ViewConfig.from_params(config.pseudo_queries, "sci.train.pseudo_queries")
    per_item = query_like_views(prepared.items["title"].astype(str).tolist(), views, config.seed)
    texts = [item_views[view] for item_views in per_item for view in range(views.views)]
    items = np.repeat(np.arange(len(prepared.items), dtype=np.int64), views.views)
    encoded = towers.read_texts(texts, lambda some: TextEncoder.from_params(text_params).encode(some, "pseudo-queries"),
                                text_params, "pseudo-queries")
    return PseudoQueries(encoded, items)


def train_towers(prepared: PreparedDataset, towers: Towers, item_base: TowerInputs, query_base: TowerInputs,
                 config: TrainConfig, log: Callable[[str], None] = lambda message: None,
                 pseudo: PseudoQueries | None = None) -> TrainResult:
    """Train f_q and f_i of `towers` (as `new_towers` made them), on the judged pairs and `pseudo`
    (`pseudo_query_inputs`); returns the best epoch's towers by validation Recall@`eval_k`."""
    if len(item_base) != len(prepared.items) or len(query_base) != len(prepared.queries):
        raise ValueError(f"tower inputs ({len(item_base)} items, {len(query_base)} queries) do not match the "
                         f"prepared dataset ({len(prepared.items)} items, {len(prepared.queries)} queries)")
    if (pseudo is None) != (not config.pseudo_queries["per_pair"]):
        raise ValueError("pseudo-query inputs must be given exactly when sci.train.pseudo_queries.per_pair > 0")
    started = time.perf_counter()
    limit_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    data = TrainingData.build(prepared, config, None if pseudo is None else pseudo.items)
    training_queries = query_base if pseudo is None else stack(query_base, pseudo.inputs)
    optimiser = torch.optim.AdamW([p for p in towers.parameters() if p.requires_grad],
                                  lr=config.learning_rate, weight_decay=config.weight_decay)
    # the untrained towers' item vectors: the preservation term's target f_0
    anchor = torch.from_numpy(towers.encode_items(item_base)) if config.lambda_preserve > 0 else None
    metric = f"recall@{config.eval_k}"

    def validate(epoch: int, loss: dict[str, float]) -> dict[str, float]:
        valid = validation_metrics(towers, prepared, item_base, query_base, "valid",
                                   max(config.eval_k, max(RECALL_KS)))
        record = {"epoch": epoch, **{f"loss_{k}": v for k, v in loss.items()},
                  **{f"valid_{k}": v for k, v in valid.items() if not k.startswith("n_")},
                  **misalignment(towers, item_base, query_base)}
        tracking.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        log(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        return record

    history = [validate(0, {})]
    best_epoch, best_score = 0, history[0][f"valid_{metric}"]
    best_state = copy.deepcopy(towers.state_dict())
    for epoch in range(1, config.epochs + 1):
        towers.train()
        epoch_queries, epoch_items, epoch_weights = data.epoch_pairs(rng)
        sums: dict[str, float] = {}
        n_batches = 0
        for start in range(0, len(epoch_queries), config.batch_size):
            q_rows, i_rows = epoch_queries[start:start + config.batch_size], epoch_items[start:start + config.batch_size]
            if len(q_rows) < 2:
                continue
            negative_rows, negative_mask = data.sample_negatives(q_rows, config.hard_negatives, rng)
            preserve = rng.integers(0, data.n_items, config.preserve_sample) if config.lambda_preserve > 0 else None
            terms = objective(towers, item_base, training_queries, q_rows, i_rows, negative_rows,
                              torch.from_numpy(negative_mask), torch.from_numpy(data.accidental_hits(q_rows, i_rows)),
                              torch.from_numpy(epoch_weights[start:start + config.batch_size]), preserve, anchor, config)
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
