"""ACRQ: anchored curriculum residual quantisation.

Stage A fits the residual codebooks on the anchor items only (head by default), weighted by
training exposure, and freezes them: the semantic manifold. Level 1 is the SCI coarse cell
of every item (routing of its query view); its codewords are the cell means of the item view
over the *whole* catalogue, so tail and cold items get the same coarse code the index
routes them to, however few head items their cell holds. Levels 2..L are fitted on the
anchor items' residuals.

Stage B brings in the other items by a curriculum of decreasing exposure (torso, then tail,
then cold; each phase trains on all items brought in so far) through an adapter `g`, a
linear map initialised to the identity, trained with
    commitment_loss + mu * preservation_loss + query_weight * query_alignment_loss
against the frozen codebooks. Only `g` has gradients: the codebooks are buffers.
Non-anchor items are then encoded as Q(g(x)); anchor items as Q(x).

`joint_fit` is the comparison: the same losses with the codebooks as parameters too,
initialised from random items and trained on all items at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .rkmeans import FirstLevel, ResidualKMeans, ResidualKMeansConfig, cell_means, nearest


@dataclass(frozen=True)
class AcrqConfig:
    anchor_segments: tuple[str, ...]
    curriculum: tuple[str, ...]
    mu: float
    query_weight: float
    temperature: float
    batch_size: int
    learning_rate: float
    max_steps_per_phase: int
    plateau_window: int
    plateau_patience: int
    plateau_tolerance: float
    seed: int

    def __post_init__(self):
        overlap = set(self.anchor_segments) & set(self.curriculum)
        if overlap:
            raise ValueError(f"acrq.curriculum {list(self.curriculum)} repeats anchor segments {sorted(overlap)}: "
                             f"anchor items are encoded as Q(x) and take no part in stage B")

    @classmethod
    def from_params(cls, section: dict, seed: int) -> "AcrqConfig":
        return cls(anchor_segments=tuple(section["anchor_segments"]), curriculum=tuple(section["curriculum"]),
                   mu=float(section["mu"]), query_weight=float(section["query_weight"]),
                   temperature=float(section["temperature"]), batch_size=int(section["batch_size"]),
                   learning_rate=float(section["learning_rate"]),
                   max_steps_per_phase=int(section["max_steps_per_phase"]),
                   plateau_window=int(section["plateau_window"]), plateau_patience=int(section["plateau_patience"]),
                   plateau_tolerance=float(section["plateau_tolerance"]), seed=int(seed))


@dataclass
class Catalogue:
    """Everything ACRQ reads about the items, as arrays in one row order.

    `item_view` f_i(item) [n, d]; `cells` level-1 code (SCI routing of f_q(item)) in
    [0, n_cells); `segment` head/torso/tail/cold; `exposure` training exposure;
    `pair_items`, `pair_queries`: rows of (item, relevant training query) pairs into
    `item_view` and `query_vectors` (f_q(query) [n_queries, d]).
    """

    item_view: np.ndarray
    cells: np.ndarray
    n_cells: int
    segment: np.ndarray
    exposure: np.ndarray
    query_vectors: np.ndarray
    pair_items: np.ndarray
    pair_queries: np.ndarray

    def __post_init__(self):
        n = len(self.item_view)
        for name in ("cells", "segment", "exposure"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Catalogue.{name} has {len(getattr(self, name))} rows for {n} items")
        if len(self.pair_items) != len(self.pair_queries):
            raise ValueError("pair_items and pair_queries differ in length")
        if len(self.pair_items) and (self.pair_items.max() >= n or self.pair_queries.max() >= len(self.query_vectors)):
            raise ValueError("a (item, query) pair points past item_view or query_vectors")
        FirstLevel(np.asarray(self.cells, dtype=np.int64), self.n_cells)

    def rows(self, segments: tuple[str, ...]) -> np.ndarray:
        return np.flatnonzero(np.isin(self.segment, segments))


# ---- stage A -------------------------------------------------------------------------------

def fit_anchor_codebooks(catalogue: Catalogue, quantizer_config: ResidualKMeansConfig,
                         config: AcrqConfig) -> ResidualKMeans:
    """Stage A: level 1 from the SCI partition of all items, levels 2..L from anchor items
    weighted by exposure."""
    anchor = catalogue.rows(config.anchor_segments)
    if len(anchor) < quantizer_config.codes_per_level:
        raise ValueError(f"ACRQ stage A: {len(anchor)} items in anchor segments {config.anchor_segments} "
                         f"cannot fit {quantizer_config.codes_per_level} codes per level; lower "
                         f"quantize.codes_per_level or widen acrq.anchor_segments")
    weights = catalogue.exposure[anchor].astype(np.float32)
    if np.any(weights <= 0):
        raise ValueError(f"ACRQ stage A weights anchor items by exposure, but {int((weights <= 0).sum())} "
                         f"anchor items have none: anchor segments {config.anchor_segments} must all be seen in training")
    cells = np.asarray(catalogue.cells, dtype=np.int64)
    quantizer = ResidualKMeans(quantizer_config)
    quantizer.fit(catalogue.item_view[anchor], weights=weights, first=FirstLevel(cells[anchor], catalogue.n_cells),
                  first_codebook=cell_means(np.asarray(catalogue.item_view, dtype=np.float32), cells, catalogue.n_cells))
    return quantizer


# ---- losses --------------------------------------------------------------------------------

def commitment_loss(z: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """mean_i ||z_i - Q(z_i)||^2: how far the adapted vectors sit from their codewords."""
    return (z - quantized).pow(2).sum(dim=1).mean()


def preservation_loss(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mean_i ||z_i - x_i||^2: the adapter must not move an item far from its own embedding."""
    return (z - x).pow(2).sum(dim=1).mean()


def query_alignment_loss(z: torch.Tensor, queries: torch.Tensor, query_ids: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """InfoNCE between adapted items and one of their training queries, in-batch negatives:

        -mean_i log( exp(s_ii / t) / sum_j exp(s_ij / t) ),  s_ij = cos(z_i, q_j),

    where column j is masked out of row i (j != i) when q_j is the same query as q_i.
    """
    logits = F.normalize(z, dim=1) @ F.normalize(queries, dim=1).T / temperature
    same_query = query_ids[:, None] == query_ids[None, :]
    same_query.fill_diagonal_(False)
    logits = logits.masked_fill(same_query, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(z)))


# ---- modules -------------------------------------------------------------------------------

class Adapter(nn.Module):
    """g(x) = W x + b, identity at initialisation."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ResidualCodebooks(nn.Module):
    """Q(z): level 1 given by the item's cell, then nearest codeword on each residual.

    Frozen (buffers) in stage B; parameters in `joint_fit`. The level-1 codebook is always
    fixed: it is the SCI partition.
    """

    def __init__(self, codebooks: list[np.ndarray], trainable: bool):
        super().__init__()
        self.register_buffer("first", torch.from_numpy(np.array(codebooks[0], dtype=np.float32)))
        tensors = [torch.from_numpy(np.array(codebook, dtype=np.float32)) for codebook in codebooks[1:]]
        if trainable:
            self.levels = nn.ParameterList([nn.Parameter(tensor) for tensor in tensors])
        else:
            for index, tensor in enumerate(tensors):
                self.register_buffer(f"level_{index}", tensor)
            self.levels = [getattr(self, f"level_{index}") for index in range(len(tensors))]

    def forward(self, z: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        quantized = self.first[cells]
        residual = z.detach() - quantized
        for codebook in self.levels:
            with torch.no_grad():
                distances = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ codebook.T + codebook.pow(2).sum(1)
                codes = distances.argmin(dim=1)
            codeword = codebook[codes]
            quantized = quantized + codeword
            residual = residual - codeword.detach()
        return quantized


# ---- training ------------------------------------------------------------------------------

@dataclass
class Convergence:
    """Steps and seconds until the windowed loss stopped improving (or the step cap)."""

    steps: int
    seconds: float
    final_loss: float
    plateaued: bool
    losses: list[float] = field(default_factory=list, repr=False)


class _Batches:
    """Mini-batches of item rows with, where the item has any, one sampled training query."""

    def __init__(self, catalogue: Catalogue, rows: np.ndarray, batch_size: int, rng: np.random.Generator):
        self.rows, self.batch_size, self.rng = rows, batch_size, rng
        order = np.argsort(catalogue.pair_items, kind="stable")
        self.query_of_pair = catalogue.pair_queries[order]
        self.count = np.bincount(catalogue.pair_items, minlength=len(catalogue.item_view))
        self.offset = np.r_[0, np.cumsum(self.count)[:-1]]
        self.x = torch.from_numpy(np.ascontiguousarray(catalogue.item_view, dtype=np.float32))
        self.cells = torch.from_numpy(np.asarray(catalogue.cells, dtype=np.int64))
        self.queries = torch.from_numpy(np.ascontiguousarray(catalogue.query_vectors, dtype=np.float32))

    def sample(self):
        rows = self.rng.choice(self.rows, size=min(self.batch_size, len(self.rows)), replace=False)
        with_query = rows[self.count[rows] > 0]
        picks = self.offset[with_query] + (self.rng.random(len(with_query)) * self.count[with_query]).astype(np.int64)
        query_rows = self.query_of_pair[picks]
        rows_t = torch.from_numpy(rows)
        return (rows_t, self.x[rows_t], self.cells[rows_t], torch.from_numpy(np.isin(rows, with_query)),
                self.queries[torch.from_numpy(query_rows)], torch.from_numpy(query_rows))


def acrq_loss(adapter: Adapter, codebooks: ResidualCodebooks, batch, config: AcrqConfig) -> torch.Tensor:
    """commitment + mu * preservation + query_weight * InfoNCE (over the batch items that have queries)."""
    _, x, cells, has_query, queries, query_ids = batch
    z = adapter(x)
    loss = commitment_loss(z, codebooks(z, cells)) + config.mu * preservation_loss(z, x)
    if config.query_weight > 0 and int(has_query.sum()) > 1:
        loss = loss + config.query_weight * query_alignment_loss(z[has_query], queries, query_ids, config.temperature)
    return loss


def train_until_plateau(parameters, batches: _Batches, loss_fn, config: AcrqConfig, max_steps: int) -> Convergence:
    """Adam on `loss_fn(batch)` until `plateau_patience` consecutive windows of `plateau_window`
    steps fail to lower the best window-mean loss by a relative `plateau_tolerance`, or `max_steps`."""
    optimiser = torch.optim.Adam(parameters, lr=config.learning_rate)
    losses, best, stale = [], float("inf"), 0
    start = time.perf_counter()
    plateaued = False
    for step in range(1, max_steps + 1):
        loss = loss_fn(batches.sample())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % config.plateau_window == 0:
            window = float(np.mean(losses[-config.plateau_window:]))
            if window < best * (1 - config.plateau_tolerance):
                best, stale = window, 0
            else:
                stale += 1
            if stale >= config.plateau_patience:
                plateaued = True
                break
    return Convergence(steps=len(losses), seconds=time.perf_counter() - start,
                       final_loss=float(np.mean(losses[-config.plateau_window:])), plateaued=plateaued, losses=losses)


@dataclass
class StageB:
    adapter: Adapter
    phases: dict[str, Convergence]

    @property
    def steps(self) -> int:
        return sum(phase.steps for phase in self.phases.values())

    @property
    def seconds(self) -> float:
        return sum(phase.seconds for phase in self.phases.values())


def train_stage_b(quantizer: ResidualKMeans, catalogue: Catalogue, config: AcrqConfig) -> StageB:
    """Stage B: the adapter through the curriculum against the frozen codebooks."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    adapter = Adapter(catalogue.item_view.shape[1])
    codebooks = ResidualCodebooks(quantizer.codebooks, trainable=False)
    phases: dict[str, Convergence] = {}
    for index, segment in enumerate(config.curriculum):
        rows = catalogue.rows(config.curriculum[:index + 1])
        if len(rows) == 0:
            raise ValueError(f"ACRQ stage B phase {segment!r}: no items in segments {config.curriculum[:index + 1]}")
        batches = _Batches(catalogue, rows, config.batch_size, rng)
        phases[segment] = train_until_plateau(adapter.parameters(), batches,
                                              lambda batch: acrq_loss(adapter, codebooks, batch, config), config,
                                              config.max_steps_per_phase)
    return StageB(adapter, phases)


def adapt(adapter: Adapter, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return adapter(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def encode_catalogue(quantizer: ResidualKMeans, adapter: Adapter, catalogue: Catalogue,
                     config: AcrqConfig) -> np.ndarray:
    """Full codes [n, L]: Q(x) for anchor items, Q(g(x)) for everyone else."""
    anchor = np.isin(catalogue.segment, config.anchor_segments)
    vectors = np.array(catalogue.item_view, dtype=np.float32)
    if (~anchor).any():
        vectors[~anchor] = adapt(adapter, vectors[~anchor])
    return quantizer.encode(vectors, first_codes=np.asarray(catalogue.cells, dtype=np.int64))


@dataclass
class JointFit:
    adapter: Adapter
    codebooks: ResidualCodebooks
    convergence: Convergence


def joint_fit(catalogue: Catalogue, quantizer_config: ResidualKMeansConfig, config: AcrqConfig) -> JointFit:
    """The comparison for stage B: adapter and codebooks (levels 2..L, initialised from random
    items' residuals) trained together on all items at once with the same loss, under the
    same plateau rule and a step cap of one phase per curriculum segment."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    cells = np.asarray(catalogue.cells, dtype=np.int64)
    x = np.asarray(catalogue.item_view, dtype=np.float32)
    first = cell_means(x, cells, catalogue.n_cells)
    residual = x - first[cells]
    codebooks = [first]
    for _ in range(quantizer_config.levels - 1):
        codebook = residual[rng.choice(len(x), size=quantizer_config.codes_per_level, replace=False)].copy()
        residual = residual - codebook[nearest(residual, codebook)[1][:, 0]]
        codebooks.append(codebook)
    adapter = Adapter(x.shape[1])
    quantizer = ResidualCodebooks(codebooks, trainable=True)
    batches = _Batches(catalogue, np.arange(len(x)), config.batch_size, rng)
    convergence = train_until_plateau([*adapter.parameters(), *quantizer.parameters()], batches,
                                      lambda batch: acrq_loss(adapter, quantizer, batch, config), config,
                                      config.max_steps_per_phase * len(config.curriculum))
    return JointFit(adapter, quantizer, convergence)


def quantisation_error(adapter: Adapter, codebooks: ResidualCodebooks, catalogue: Catalogue,
                       adapted: np.ndarray) -> float:
    """mean_i ||v_i - Q(v_i)||^2 over all items, v_i = g(x_i) where `adapted[i]` else x_i."""
    x = torch.from_numpy(np.ascontiguousarray(catalogue.item_view, dtype=np.float32))
    with torch.no_grad():
        v = torch.where(torch.from_numpy(adapted)[:, None], adapter(x), x)
        return float(commitment_loss(v, codebooks(v, torch.from_numpy(np.asarray(catalogue.cells, dtype=np.int64)))))


def compare_convergence(catalogue: Catalogue, quantizer_config: ResidualKMeansConfig, config: AcrqConfig) -> dict:
    """ACRQ (stage A k-means, then stage B curriculum) against joint fitting of all items:
    steps and seconds to a loss plateau, and the quantisation error each ends with."""
    start = time.perf_counter()
    quantizer = fit_anchor_codebooks(catalogue, quantizer_config, config)
    stage_a_seconds = time.perf_counter() - start
    stage_b = train_stage_b(quantizer, catalogue, config)
    joint = joint_fit(catalogue, quantizer_config, config)
    not_anchor = ~np.isin(catalogue.segment, config.anchor_segments)
    return {
        "stage_a_seconds": stage_a_seconds,
        "stage_b_steps": stage_b.steps,
        "stage_b_seconds": stage_b.seconds,
        "stage_b_plateaued": all(phase.plateaued for phase in stage_b.phases.values()),
        **{f"stage_b_steps_{segment}": phase.steps for segment, phase in stage_b.phases.items()},
        "stage_b_quantisation_error": quantisation_error(
            stage_b.adapter, ResidualCodebooks(quantizer.codebooks, trainable=False), catalogue, not_anchor),
        "joint_steps": joint.convergence.steps,
        "joint_seconds": joint.convergence.seconds,
        "joint_plateaued": joint.convergence.plateaued,
        "joint_quantisation_error": quantisation_error(joint.adapter, joint.codebooks, catalogue,
                                                       np.ones(len(catalogue.item_view), dtype=bool)),
    }
