"""Residual k-means on faiss: fit, encode, reconstruct.

Level l quantises what levels 1..l-1 left over: `r_0 = x`, `c_l = argmin_k ||r_{l-1} - C_l[k]||`,
`r_l = r_{l-1} - C_l[c_l]`; the reconstruction is `sum_l C_l[c_l]`.

The first level may be fixed from outside (`FirstLevel`): the SCI dual-view index routes an
item's *query view* to a coarse cell, and that cell is the item's level-1 code, so SIDs and
the index partition the catalogue the same way. The level-1 codeword used for residuals is
then the mean *item view* of the cell's items (the least-squares reconstruction of the
item view given the fixed partition); finer levels quantise the item-view residuals.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

# faiss assigns in blocks of this many rows so that the gathered codewords stay small
_BLOCK_ROWS = 1 << 16


@dataclass(frozen=True)
class ResidualKMeansConfig:
    """`levels` codebooks of `codes_per_level` codes (level 1 may come from a `FirstLevel`).

    `max_points_per_centroid`: faiss subsamples each level's training set to K times this.
    `balanced`: the fitted items are assigned under a capacity of
    `ceil(balance_slack * n / K)` items per code (new items are always encoded to the nearest code).
    """

    levels: int
    codes_per_level: int
    iterations: int
    max_points_per_centroid: int
    balanced: bool
    balance_slack: float
    seed: int

    @classmethod
    def from_params(cls, section: dict, seed: int) -> "ResidualKMeansConfig":
        return cls(levels=int(section["levels"]), codes_per_level=int(section["codes_per_level"]),
                   iterations=int(section["kmeans_iterations"]),
                   max_points_per_centroid=int(section["max_points_per_centroid"]),
                   balanced=bool(section["balanced"]), balance_slack=float(section["balance_slack"]),
                   seed=int(seed))


@dataclass(frozen=True)
class FirstLevel:
    """A level 1 decided outside the quantizer: every item's cell and the number of cells."""

    codes: np.ndarray
    n_cells: int

    def __post_init__(self):
        codes = np.asarray(self.codes)
        if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"FirstLevel.codes must be a 1-d integer array, got shape {codes.shape} dtype {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.n_cells):
            raise ValueError(f"FirstLevel.codes must lie in [0, {self.n_cells}), got [{codes.min()}, {codes.max()}]")


def cell_means(x: np.ndarray, cells: np.ndarray, n_cells: int) -> np.ndarray:
    """Mean row of `x` per cell; an empty cell gets the zero vector (no item reconstructs from it)."""
    sums = np.zeros((n_cells, x.shape[1]), dtype=np.float64)
    np.add.at(sums, cells, x)
    counts = np.bincount(cells, minlength=n_cells).astype(np.float64)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


def kmeans(x: np.ndarray, k: int, config: ResidualKMeansConfig, weights: np.ndarray | None = None,
           seed_offset: int = 0) -> np.ndarray:
    """faiss k-means centroids [k, d] of the rows of `x` (optionally weighted)."""
    if len(x) < k:
        raise ValueError(f"k-means needs at least as many points as codes: {len(x)} points for {k} codes")
    km = faiss.Kmeans(x.shape[1], k, niter=config.iterations, seed=config.seed + seed_offset,
                      max_points_per_centroid=config.max_points_per_centroid, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32),
             weights=None if weights is None else np.ascontiguousarray(weights, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """faiss exact search: squared distances and ids of the `k` nearest centroids of each row."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), k)


def balanced_assign(x: np.ndarray, centroids: np.ndarray, slack: float) -> np.ndarray:
    """Nearest-code assignment under a capacity of ceil(slack * n / K) items per code.

    Greedy over (item, code) pairs by increasing distance: each item takes its closest code
    that still has room. Items ranked this way lose little distortion while no code
    swallows a dense region.
    """
    if slack < 1.0:
        raise ValueError(f"balance_slack must be >= 1 so every item fits, got {slack}")
    n, k = len(x), len(centroids)
    capacity = np.full(k, int(np.ceil(slack * n / k)), dtype=np.int64)
    distances, candidates = nearest(x, centroids, k)
    order = np.argsort(distances, axis=None, kind="stable")
    codes = np.full(n, -1, dtype=np.int64)
    unassigned = n
    for flat in order:
        item, rank = divmod(int(flat), k)
        if codes[item] >= 0:
            continue
        code = candidates[item, rank]
        if capacity[code] > 0:
            codes[item] = code
            capacity[code] -= 1
            unassigned -= 1
            if unassigned == 0:
                break
    return codes


class ResidualKMeans:
    """Residual k-means quantizer; `codebooks[l]` is level l+1's [K_l, d] codewords."""

    def __init__(self, config: ResidualKMeansConfig):
        if config.levels < 1 or config.codes_per_level < 1:
            raise ValueError(f"need levels >= 1 and codes_per_level >= 1, got {config}")
        self.config = config
        self.codebooks: list[np.ndarray] = []
        self.fixed_first_level = False

    @property
    def codes_per_level(self) -> list[int]:
        return [len(codebook) for codebook in self.codebooks]

    def fit(self, x: np.ndarray, weights: np.ndarray | None = None, first: FirstLevel | None = None,
            first_codebook: np.ndarray | None = None) -> np.ndarray:
        """Fit every level on `x` and return the fitted items' codes [n, levels].

        `first`: level-1 codes decided outside (SCI routing); the level-1 codewords are
        `first_codebook` when given (e.g. cell means over a larger catalogue than `x`), else
        the cell means of `x`. `weights`: per-item weights of the k-means objective.
        """
        x = _as_matrix(x, "x")
        if weights is not None and (len(weights) != len(x) or np.any(np.asarray(weights) < 0)):
            raise ValueError(f"weights must be {len(x)} non-negative numbers, got shape {np.shape(weights)}")
        if first is not None and len(first.codes) != len(x):
            raise ValueError(f"FirstLevel has {len(first.codes)} codes for {len(x)} items")
        self.codebooks = []
        self.fixed_first_level = first is not None
        codes = np.empty((len(x), self.config.levels), dtype=np.int64)
        residual = x.copy()
        for level in range(self.config.levels):
            if level == 0 and first is not None:
                codebook = first_codebook if first_codebook is not None else cell_means(x, first.codes, first.n_cells)
                if codebook.shape != (first.n_cells, x.shape[1]):
                    raise ValueError(f"first_codebook must have shape {(first.n_cells, x.shape[1])}, got {codebook.shape}")
                level_codes = np.asarray(first.codes, dtype=np.int64)
            else:
                codebook = kmeans(residual, self.config.codes_per_level, self.config, weights, seed_offset=level)
                level_codes = (balanced_assign(residual, codebook, self.config.balance_slack) if self.config.balanced
                               else nearest(residual, codebook)[1][:, 0].astype(np.int64))
            self.codebooks.append(np.ascontiguousarray(codebook, dtype=np.float32))
            codes[:, level] = level_codes
            _subtract_codewords(residual, codebook, level_codes)
        return codes

    def encode(self, x: np.ndarray, first_codes: np.ndarray | None = None) -> np.ndarray:
        """Codes [n, levels] of new rows: nearest codeword level by level.

        With a fixed first level the caller passes `first_codes` (the routing of the rows'
        query view); the quantizer cannot route an item view itself.
        """
        self._require_fitted()
        x = _as_matrix(x, "x")
        if self.fixed_first_level and first_codes is None:
            raise ValueError("this quantizer's level 1 is the SCI routing: pass first_codes")
        codes = np.empty((len(x), len(self.codebooks)), dtype=np.int64)
        residual = x.copy()
        for level, codebook in enumerate(self.codebooks):
            if level == 0 and first_codes is not None:
                first_codes = np.asarray(first_codes, dtype=np.int64)
                if first_codes.shape != (len(x),) or first_codes.min(initial=0) < 0 or first_codes.max(initial=0) >= len(codebook):
                    raise ValueError(f"first_codes must be {len(x)} codes in [0, {len(codebook)})")
                level_codes = first_codes
            else:
                level_codes = nearest(residual, codebook)[1][:, 0].astype(np.int64)
            codes[:, level] = level_codes
            _subtract_codewords(residual, codebook, level_codes)
        return codes

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Sum of the codewords of each row's codes (rows may use fewer levels: -1 = absent)."""
        self._require_fitted()
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] > len(self.codebooks):
            raise ValueError(f"codes must be [n, <= {len(self.codebooks)}], got shape {codes.shape}")
        out = np.zeros((len(codes), self.codebooks[0].shape[1]), dtype=np.float32)
        for level in range(codes.shape[1]):
            present = codes[:, level] >= 0
            out[present] += self.codebooks[level][codes[present, level]]
        return out

    def save(self, path: str | Path) -> Path:
        self._require_fitted()
        path = Path(path)
        np.savez(path, config=np.array(json.dumps(asdict(self.config))), fixed_first=np.array(self.fixed_first_level),
                 **{f"level_{level}": codebook for level, codebook in enumerate(self.codebooks)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ResidualKMeans":
        with np.load(Path(path)) as stored:
            config = ResidualKMeansConfig(**json.loads(str(stored["config"])))
            quantizer = cls(config)
            quantizer.codebooks = [stored[f"level_{level}"] for level in range(config.levels)]
            quantizer.fixed_first_level = bool(stored["fixed_first"])
        return quantizer

    def _require_fitted(self):
        if not self.codebooks:
            raise RuntimeError("ResidualKMeans is not fitted: call fit() or load()")


def _subtract_codewords(residual: np.ndarray, codebook: np.ndarray, codes: np.ndarray) -> None:
    for start in range(0, len(residual), _BLOCK_ROWS):
        stop = start + _BLOCK_ROWS
        residual[start:stop] -= codebook[codes[start:stop]]


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty 2-d array, got shape {x.shape}")
    for start in range(0, len(x), _BLOCK_ROWS):
        finite = np.isfinite(x[start:start + _BLOCK_ROWS]).all(axis=1)
        if not finite.all():
            raise ValueError(f"{name} has a non-finite value in row {start + int(np.argmin(finite))}")
    return np.ascontiguousarray(x, dtype=np.float32)
