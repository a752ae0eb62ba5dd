"""Consistent dual-view FAISS index (SCI's "CI") and its baselines.

Every item has two views: the query view u = f_q(item) and the item view v = f_i(item).
Queries are embedded by the query tower, q = f_q(query), and the dual-tower score of an
item is q·v.

- Coarse level: spherical k-means on the items' *query view* u. A query is routed by
  `route(q)` = argmax_c q·c, and every item is filed in the list `route(u)` of its own
  query view, so queries and items are partitioned by one function in one space — the
  space queries live in at inference. The semantic-ID stage uses the same `route` (and
  these centroids) for its first level.
- Fine level: the lists store the *item view* v (IndexIVFFlat, inner product), so within
  the probed lists items are ranked by the true dual-tower score q·v; the finer SID levels
  quantise item-view residuals.
- Lists may refine the cells (`lists_per_cell` r > 1): each cell's items are clustered again
  into up to r list centroids, and queries and items alike go to their nearest *list* centroid
  in the same query-view space, so routing stays consistent while the index count is decoupled
  from the number of first-level SID codes (the cells). With r = 1 the lists are the cells.
- Items may spill (`spill` s > 1): each is filed in its s nearest lists by the same routing, so
  a query whose nearest lists miss an item's first list can still find it in its second; search
  returns each item once. s times the stored vectors and fewer lists probed for a recall; per
  vector scanned it pays at small nprobe (Home Depot: README, the spill table).
- Items are also filed by their query views (`query_views` V > 0): the f_q of V query-like
  texts of each item (`text/views.py`: term subsets, spans and typos of its title, encoded by the
  query tower) each file the item in its nearest list as well, when that list is not already one
  of its own. f_q(item title) sits where the item's own text routes; a short, misspelt query for
  it often routes elsewhere, and its query views land where such queries land. Up to `spill` + V
  copies per item, each item returned once (Home Depot: README, the dual-view index table).
- Lists may store product-quantised codes instead of the item view (`pq_subquantizers` M > 0: IVF-PQ,
  M codes of `pq_bits` bits per vector, trained on the item view's residuals to its list): for a catalogue
  whose vectors do not fit in memory. Scores are then approximate (README, the IVF-PQ rows).
- Baseline `coarse_view="item"`: the usual IVF, k-means on v and items filed by route(v),
  queries routed in a space they were never trained to share with those centroids.
- `FlatIndex`: exact inner-product search over v, the reference for recall.

Faiss k-means wants at least 39 training points per centroid, so the number of lists is
`min(index.nlist, n_items // index.min_points_per_list)` (at least 1): the configured
nlist is a ceiling that small catalogues scale down from.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned

INDEX_FILE = "ivf.faiss"
CENTROIDS_FILE = "centroids.npy"
META_FILE = "index.json"
VIEWS = ("query", "item")


def _matrix(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"{what} must be a [n, {dim or 'd'}] matrix, got shape {vectors.shape}")
    return vectors


def n_lists(n_items: int, nlist: int, min_points_per_list: int) -> int:
    """Number of IVF lists for a catalogue of `n_items` (see the module docstring)."""
    if nlist < 1 or min_points_per_list < 1:
        raise ValueError(f"index.nlist ({nlist}) and index.min_points_per_list ({min_points_per_list}) must be >= 1")
    return max(1, min(nlist, n_items // min_points_per_list))


def spherical_kmeans(vectors: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """Unit-norm centroids [k, d] of faiss spherical k-means (assignment by inner product)."""
    vectors = _matrix(vectors, "k-means input")
    if k > len(vectors):
        raise ValueError(f"cannot fit {k} centroids to {len(vectors)} vectors")
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False)
    kmeans.train(vectors)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


class FlatIndex:
    """Exact maximum-inner-product search over the item vectors."""

    def __init__(self, item_vectors: np.ndarray):
        item_vectors = _matrix(item_vectors, "item vectors")
        self.index = faiss.IndexFlatIP(item_vectors.shape[1])
        self.index.add(item_vectors)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, query_vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n, k], item rows [n, k]); `nprobe` is accepted for interface parity and ignored."""
        return self.index.search(_matrix(query_vectors, "query vectors", self.index.d), k)


def refine_cells(vectors: np.ndarray, centroids: np.ndarray, lists_per_cell: int, min_points_per_list: int,
                 niter: int, seed: int) -> np.ndarray:
    """List centroids [n_lists, d]: each cell's rows clustered into min(r, rows // min_points) lists.

    Cells are taken in order, so the lists of cell c follow those of cell c − 1; a cell too
    small to split keeps its own centroid as its one list.
    """
    if lists_per_cell < 1:
        raise ValueError(f"index.lists_per_cell must be >= 1, got {lists_per_cell}")
    if lists_per_cell == 1:
        return centroids
    cells = np.argmax(vectors @ centroids.T, axis=1)
    lists = []
    for cell in range(len(centroids)):
        members = vectors[cells == cell]
        k = min(lists_per_cell, len(members) // min_points_per_list)
        lists.append(spherical_kmeans(members, k, niter, seed + cell) if k > 1 else centroids[cell:cell + 1])
    return np.ascontiguousarray(np.concatenate(lists), dtype=np.float32)


class DualViewIndex:
    """IVF over item-view vectors with coarse cells (and lists) from the `coarse_view` of the items."""

    def __init__(self, index: faiss.IndexIVF, centroids: np.ndarray, coarse_view: str, nprobe: int, spill: int,
                 query_views: int, n_items: int):
        if coarse_view not in VIEWS:
            raise ValueError(f"coarse_view must be one of {VIEWS}, got {coarse_view!r}")
        if not 1 <= spill <= index.nlist:
            raise ValueError(f"index.spill must be in [1, {index.nlist}] (the number of lists), got {spill}")
        if query_views < 0:
            raise ValueError(f"index.query_views must be >= 0, got {query_views}")
        self.index = index
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.coarse_view = coarse_view
        self.nprobe = nprobe
        self.spill = spill
        self.query_views = query_views
        self.n_items = n_items

    @classmethod
    def build(cls, query_view: np.ndarray, item_view: np.ndarray, nlist: int, niter: int, seed: int,
              nprobe: int, *, lists_per_cell: int, min_points_per_list: int, spill: int,
              pq_subquantizers: int, pq_bits: int, coarse_view: str = "query",
              query_view_texts: np.ndarray | None = None) -> "DualViewIndex":
        """Cluster the items' `coarse_view` into `nlist` cells (refined into up to `lists_per_cell`
        lists each), file each item by it in its `spill` nearest lists and by each of its query views
        `query_view_texts` ([V, n_items, d]: f_q of V query-like texts per item) in that view's
        nearest list where it is not filed yet; store the item view (or, with `pq_subquantizers` > 0, its
        product-quantised codes)."""
        item_view = _matrix(item_view, "item view")
        query_view = _matrix(query_view, "item query view", item_view.shape[1])
        if len(query_view) != len(item_view):
            raise ValueError(f"query view has {len(query_view)} rows but item view has {len(item_view)}")
        if coarse_view not in VIEWS:
            raise ValueError(f"coarse_view must be one of {VIEWS}, got {coarse_view!r}")
        texts = np.zeros((0, *item_view.shape), dtype=np.float32) if query_view_texts is None else query_view_texts
        if texts.ndim != 3 or texts.shape[1:] != item_view.shape:
            raise ValueError(f"query view texts must be [views, {len(item_view)}, {item_view.shape[1]}], got {texts.shape}")
        dim = item_view.shape[1]
        if pq_subquantizers < 0 or (pq_subquantizers and dim % pq_subquantizers) or not 1 <= pq_bits <= 16:
            raise ValueError(f"index.pq_subquantizers must be 0 (IVF-Flat) or divide the vector width {dim}, and "
                             f"index.pq_bits be in [1, 16]; got {pq_subquantizers} and {pq_bits}")
        coarse = query_view if coarse_view == "query" else item_view
        centroids = spherical_kmeans(coarse, nlist, niter, seed)
        list_centroids = refine_cells(coarse, centroids, lists_per_cell, min_points_per_list, niter, seed)
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(list_centroids)
        if pq_subquantizers:
            index = faiss.IndexIVFPQ(quantizer, dim, len(list_centroids), pq_subquantizers, pq_bits,
                                     faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            # the quantizer holds our centroids (faiss leaves a full quantizer as it is); this trains the codes
            index.train(item_view)
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, len(list_centroids), faiss.METRIC_INNER_PRODUCT)
            index.is_trained = True  # the quantizer already holds our centroids; faiss must not retrain it
        built = cls(index, centroids, coarse_view, nprobe, spill, len(texts), len(item_view))
        _, nearest = quantizer.search(coarse, spill)
        lists = [nearest[:, column] for column in range(spill)]
        lists += [quantizer.search(_matrix(view, "query view texts"), 1)[1][:, 0] for view in texts]
        rows = np.arange(len(item_view), dtype=np.int64)
        for copy, filed_in in enumerate(lists):
            new = np.ones(len(rows), dtype=bool)
            for earlier in lists[:copy]:
                new &= filed_in != earlier
            # add_preassigned keeps only a raw pointer to `ids`: the arrays must outlive the call
            vectors, assigned, ids = (np.ascontiguousarray(array[new]) for array in (item_view, filed_in, rows))
            add_preassigned(index, vectors, assigned, ids=ids)
        return built

    @property
    def copies(self) -> int:
        """The most lists an item is filed in: spill + query views."""
        return self.spill + self.query_views

    @property
    def nlist(self) -> int:
        """Number of IVF lists (= cells unless the lists refine them)."""
        return int(self.index.nlist)

    @property
    def n_cells(self) -> int:
        """Number of coarse cells: the first-level SID codes."""
        return len(self.centroids)

    @property
    def ntotal(self) -> int:
        """Stored entries: items x spill, plus each query view filed in a list of its own."""
        return int(self.index.ntotal)

    def route(self, query_view_vectors: np.ndarray) -> np.ndarray:
        """Coarse cell per row, argmax_c x·c (with unrefined lists: the list a query is probed first in / an item is filed in)."""
        vectors = _matrix(query_view_vectors, "vectors to route", self.index.d)
        if self.nlist == self.n_cells:
            _, cells = self.index.quantizer.search(vectors, 1)
            return cells[:, 0].astype(np.int64)
        return self._cell_index.search(vectors, 1)[1][:, 0].astype(np.int64)

    @cached_property
    def _cell_index(self) -> faiss.IndexFlatIP:
        """Exact search over the coarse cell centroids (refined lists have their own quantizer)."""
        cells = faiss.IndexFlatIP(self.index.d)
        cells.add(self.centroids)
        return cells

    def route_lists(self, query_view_vectors: np.ndarray) -> np.ndarray:
        """IVF list per row: the list an item is filed in / a query is probed first in."""
        _, lists = self.index.quantizer.search(_matrix(query_view_vectors, "vectors to route", self.index.d), 1)
        return lists[:, 0].astype(np.int64)

    def list_assignments(self) -> np.ndarray:
        """[n_items, copies] the lists each item row is filed in (ascending), read back from faiss's
        inverted lists; -1 past the lists an item is filed in."""
        n_items = self.n_items
        lists = np.full((n_items, self.copies), -1, dtype=np.int64)
        filed = np.zeros(n_items, dtype=np.int64)
        invlists = self.index.invlists
        for cell in range(self.nlist):
            size = invlists.list_size(cell)
            if size:
                ids = faiss.rev_swig_ptr(invlists.get_ids(cell), size).copy()
                if ids.max() >= n_items or (filed[ids] >= self.copies).any():
                    raise ValueError(f"list {cell} holds item rows beyond {n_items} items filed at most "
                                     f"{self.copies} times each")
                lists[ids, filed[ids]] = cell
                filed[ids] += 1
        return lists

    def scanned(self, query_vectors: np.ndarray, nprobe: int | None = None) -> np.ndarray:
        """[n] stored entries each query's search compares against: the sizes of its `nprobe` lists."""
        nprobe = self.nprobe if nprobe is None else nprobe
        _, lists = self.index.quantizer.search(_matrix(query_vectors, "query vectors", self.index.d), nprobe)
        sizes = np.array([self.index.invlists.list_size(cell) for cell in range(self.nlist)], dtype=np.int64)
        return sizes[lists].sum(axis=1)

    def search(self, query_vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n, k], item rows [n, k]) from the `nprobe` nearest cells; rows are -1 past the probed items."""
        nprobe = self.nprobe if nprobe is None else nprobe
        if not 1 <= nprobe <= self.nlist:
            raise ValueError(f"nprobe must be in [1, {self.nlist}], got {nprobe}")
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        vectors = _matrix(query_vectors, "query vectors", self.index.d)
        if self.copies == 1:
            return self.index.search(vectors, k, params=params)
        scores, rows = self.index.search(vectors, k * self.copies, params=params)
        return first_occurrences(scores, rows, k)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        np.save(folder / CENTROIDS_FILE, self.centroids)
        (folder / META_FILE).write_text(json.dumps({
            "coarse_view": self.coarse_view, "fine_view": "item", "nlist": self.nlist, "n_cells": self.n_cells,
            "nprobe": self.nprobe, "spill": self.spill, "query_views": self.query_views, "n_items": self.n_items,
            "pq_subquantizers": int(self.index.pq.M) if isinstance(self.index, faiss.IndexIVFPQ) else 0,
            "ntotal": self.ntotal, "dim": int(self.index.d),
        }, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "DualViewIndex":
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        index = faiss.read_index(str(folder / INDEX_FILE))
        # an index written before spill / query views existed filed each item spill times / once
        spill = meta.get("spill", 1)
        return cls(index, np.load(folder / CENTROIDS_FILE), meta["coarse_view"], meta["nprobe"], spill,
                   meta.get("query_views", 0), meta.get("n_items", int(index.ntotal) // spill))


def first_occurrences(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, k], rows [n, k]) of a best-first result with each row id kept at its first
    place: a spilled item comes back once per probed list it sits in. Past the distinct ids,
    rows are -1 and scores -inf."""
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1)
    repeat = np.zeros(rows.shape, dtype=bool)
    repeat[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    keep = np.ones(rows.shape, dtype=bool)
    np.put_along_axis(keep, order, ~repeat, axis=1)
    keep &= rows >= 0
    # a stable sort on "dropped" brings the kept entries to the front in their best-first order
    front = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, front, axis=1)
    return (np.where(kept, np.take_along_axis(scores, front, axis=1), -np.inf).astype(scores.dtype),
            np.where(kept, np.take_along_axis(rows, front, axis=1), -1))


def rankings(item_rows: np.ndarray, query_ids: Sequence[str], item_ids: Sequence[str]) -> dict[str, list[str]]:
    """query_id -> ranked item ids from a search result's row matrix (−1 padding dropped)."""
    item_ids = np.asarray(item_ids)
    return {query: item_ids[rows[rows >= 0]].tolist() for query, rows in zip(query_ids, item_rows)}


def dense_rankings(query_vectors: np.ndarray, index: FlatIndex | DualViewIndex, k: int,
                   query_ids: Sequence[str], item_ids: Sequence[str], nprobe: int | None = None) -> Mapping[str, list[str]]:
    _, rows = index.search(query_vectors, k, nprobe)
    return rankings(rows, query_ids, item_ids)
