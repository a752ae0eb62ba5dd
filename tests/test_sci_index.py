"""Consistent dual-view IVF index: routing, consistency with faiss, exactness at full probe, persistence."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from sid_models.sci.index import DualViewIndex, FlatIndex, first_occurrences, n_lists, rankings
from sid_models.sci.stage import choose_nprobe

UNREFINED = {"lists_per_cell": 1, "min_points_per_list": 39, "spill": 1, "pq_subquantizers": 0, "pq_bits": 8}


def _unit(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def views():
    """Item query view u and item view v = u plus noise (what trained towers produce), and queries."""
    rng = np.random.default_rng(0)
    query_view = _unit(1200, 16, rng)
    item_view = query_view + 0.3 * _unit(1200, 16, rng)
    item_view /= np.linalg.norm(item_view, axis=1, keepdims=True)
    return query_view, item_view, _unit(50, 16, rng)


@pytest.fixture(scope="module")
def dual(views):
    query_view, item_view, _ = views
    return DualViewIndex.build(query_view, item_view, nlist=12, niter=10, seed=0, nprobe=2, **UNREFINED)


def test_query_routes_to_the_cell_faiss_assigns(dual, views):
    _, _, queries = views
    _, faiss_cells = dual.index.quantizer.search(queries, 1)
    np.testing.assert_array_equal(dual.route(queries), faiss_cells[:, 0])
    np.testing.assert_array_equal(dual.route(queries), np.argmax(queries @ dual.centroids.T, axis=1))


def test_items_are_filed_in_the_cell_their_query_view_routes_to(dual, views):
    query_view, item_view, _ = views
    assert (dual.list_assignments()[:, 0] == dual.route(query_view)).all()
    # the item view would route part of them elsewhere: the filing really follows u, not v
    assert (dual.route(item_view) != dual.route(query_view)).any()


def test_item_view_baseline_files_items_by_their_item_view(views):
    query_view, item_view, _ = views
    baseline = DualViewIndex.build(query_view, item_view, nlist=12, niter=10, seed=0, nprobe=2, coarse_view="item", **UNREFINED)
    assert (baseline.list_assignments()[:, 0] == baseline.route(item_view)).all()


def test_probing_every_list_equals_exact_search(dual, views):
    _, item_view, queries = views
    exact_scores, exact_rows = FlatIndex(item_view).search(queries, 10)
    scores, rows = dual.search(queries, 10, nprobe=dual.nlist)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)
    np.testing.assert_allclose(exact_scores[:, 0], (queries @ item_view.T).max(axis=1), atol=1e-6)


def test_one_probe_only_returns_items_of_the_routed_cell(dual, views):
    _, _, queries = views
    _, rows = dual.search(queries, 10, nprobe=1)
    cells = dual.list_assignments()[:, 0]
    for query_cell, found in zip(dual.route(queries), rows):
        assert (cells[found[found >= 0]] == query_cell).all()


def test_saved_index_loads_identically(dual, views, tmp_path):
    _, _, queries = views
    dual.save(tmp_path)
    loaded = DualViewIndex.load(tmp_path)
    assert (loaded.nlist, loaded.nprobe, loaded.coarse_view, loaded.ntotal) == (12, 2, "query", 1200)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], dual.search(queries, 5)[1])
    np.testing.assert_array_equal(loaded.centroids, dual.centroids)


def test_nprobe_outside_the_lists_is_rejected(dual, views):
    with pytest.raises(ValueError, match="nprobe"):
        dual.search(views[2], 5, nprobe=dual.nlist + 1)


def test_mismatched_views_are_rejected(views):
    query_view, item_view, _ = views
    with pytest.raises(ValueError, match="rows"):
        DualViewIndex.build(query_view[:10], item_view, nlist=2, niter=5, seed=0, nprobe=1, **UNREFINED)


def test_number_of_lists_scales_down_with_the_catalogue():
    assert n_lists(54_667, 256, 39) == 256
    assert n_lists(3_000, 256, 39) == 76
    assert n_lists(20, 256, 39) == 1


def test_rankings_map_rows_to_ids_and_drop_padding():
    assert rankings(np.array([[2, 0, -1]]), ["q"], ["a", "b", "c"]) == {"q": ["c", "a"]}


def test_index_is_faiss_ivf_over_inner_product(dual):
    assert isinstance(dual.index, faiss.IndexIVFFlat) and dual.index.metric_type == faiss.METRIC_INNER_PRODUCT


def test_refined_lists_nest_in_the_cells_and_keep_routing_consistent(views):
    query_view, item_view, queries = views
    cells_only = DualViewIndex.build(query_view, item_view, nlist=6, niter=10, seed=0, nprobe=1, **UNREFINED)
    refined = DualViewIndex.build(query_view, item_view, nlist=6, niter=10, seed=0, nprobe=1,
                                  lists_per_cell=3, min_points_per_list=39, spill=1, pq_subquantizers=0, pq_bits=8)
    # the cells (first SID level) are untouched by the refinement; the lists are finer
    np.testing.assert_array_equal(refined.centroids, cells_only.centroids)
    np.testing.assert_array_equal(refined.route(query_view), cells_only.route(query_view))
    assert (refined.n_cells, refined.nlist) == (6, 18)
    # items and queries go to their nearest list centroid in the same space
    assert (refined.list_assignments()[:, 0] == refined.route_lists(query_view)).all()
    _, rows = refined.search(queries, 10, nprobe=1)
    lists = refined.list_assignments()[:, 0]
    for query_list, found in zip(refined.route_lists(queries), rows):
        assert (lists[found[found >= 0]] == query_list).all()
    # most items sit in a list of their own cell (the lists were fitted inside the cells)
    list_cell = np.repeat(np.arange(6), 3)
    assert (list_cell[lists] == refined.route(query_view)).mean() > 0.8
    np.testing.assert_array_equal(refined.search(queries, 10, nprobe=18)[1], FlatIndex(item_view).search(queries, 10)[1])


def test_a_cell_too_small_to_split_keeps_one_list(views):
    query_view, item_view, _ = views
    refined = DualViewIndex.build(query_view, item_view, nlist=6, niter=10, seed=0, nprobe=1,
                                  lists_per_cell=4, min_points_per_list=150, spill=1, pq_subquantizers=0, pq_bits=8)
    # 1,200 items in 6 cells: about 200 per cell, so each splits into one list (< 2 x 150 points)
    sizes = np.bincount(refined.route(query_view), minlength=6)
    assert refined.nlist == sum(max(1, min(4, size // 150)) for size in sizes)


def test_auto_nprobe_is_the_smallest_power_of_two_reaching_the_ratio(dual, views):
    _, item_view, queries = views
    exact_rows = FlatIndex(item_view).search(queries, 10)[1]

    def overlap(rows):
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_rows)]))

    nprobe, sweep = choose_nprobe(dual, queries, 1.0, overlap, 0.9)
    recalls = [step["valid_recall@10"] for step in sweep]
    assert [step["nprobe"] for step in sweep] == [2 ** i for i in range(len(sweep) - 1)] + [nprobe]
    assert recalls[-1] >= 0.9 and all(recall < 0.9 for recall in recalls[:-1])
    # asking for exact recall probes every list
    assert choose_nprobe(dual, queries, 1.0, overlap, 1.0)[0] == dual.nlist


def test_spilled_items_sit_in_their_nearest_lists_and_come_back_once(views):
    query_view, item_view, queries = views
    single = DualViewIndex.build(query_view, item_view, nlist=12, niter=10, seed=0, nprobe=2, **UNREFINED)
    spilled = DualViewIndex.build(query_view, item_view, nlist=12, niter=10, seed=0, nprobe=2,
                                  **{**UNREFINED, "spill": 2})
    assert spilled.ntotal == 2 * len(item_view)
    _, nearest = spilled.index.quantizer.search(query_view, 2)
    np.testing.assert_array_equal(spilled.list_assignments(), np.sort(nearest, axis=1))
    scores, rows = spilled.search(queries, 20, nprobe=1)
    for found in rows:
        found = found[found >= 0]
        assert len(found) == len(set(found.tolist())) > 0
    np.testing.assert_array_equal(np.diff(scores, axis=1) <= 1e-6, np.ones((len(queries), 19), dtype=bool))
    # every list probed: the exact ranking, each item once
    np.testing.assert_array_equal(spilled.search(queries, 10, nprobe=12)[1], FlatIndex(item_view).search(queries, 10)[1])
    # one probe of a spilled index reaches every item a probe of the single index reaches, and more
    reached_single = single.search(queries, 200, nprobe=1)[1]
    reached_spilled = spilled.search(queries, 400, nprobe=1)[1]
    for few, more in zip(reached_single, reached_spilled):
        assert set(few[few >= 0].tolist()) < set(more[more >= 0].tolist())
    assert (spilled.scanned(queries, 1) > single.scanned(queries, 1)).all()
    assert (single.scanned(queries, 12) == len(item_view)).all()


def test_spill_survives_save_and_load(views, tmp_path):
    query_view, item_view, queries = views
    spilled = DualViewIndex.build(query_view, item_view, nlist=12, niter=10, seed=0, nprobe=2,
                                  **{**UNREFINED, "spill": 3})
    spilled.save(tmp_path)
    loaded = DualViewIndex.load(tmp_path)
    assert (loaded.spill, loaded.ntotal) == (3, 3 * len(item_view))
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], spilled.search(queries, 10)[1])


def test_spill_beyond_the_lists_is_rejected(views):
    query_view, item_view, _ = views
    with pytest.raises(ValueError, match="spill"):
        DualViewIndex.build(query_view, item_view, nlist=4, niter=5, seed=0, nprobe=1, **{**UNREFINED, "spill": 5})


def test_first_occurrences_keeps_the_best_first_place_of_each_row():
    scores = np.array([[.9, .9, .8, .7, .7, .1], [.5, .4, -np.inf, -np.inf, -np.inf, -np.inf]], dtype=np.float32)
    rows = np.array([[3, 3, 1, 4, 1, 2], [7, 8, -1, -1, -1, -1]])
    kept_scores, kept_rows = first_occurrences(scores, rows, 4)
    np.testing.assert_array_equal(kept_rows, [[3, 1, 4, 2], [7, 8, -1, -1]])
    np.testing.assert_allclose(kept_scores, [[.9, .8, .7, .1], [.5, .4, -np.inf, -np.inf]])


def _query_view_texts(query_view: np.ndarray, n_views: int, rng: np.random.Generator) -> np.ndarray:
    """[V, n, d] noisy copies of each item's query view: what short, misspelt query-like texts give."""
    noisy = query_view[None] + 0.8 * np.stack([_unit(len(query_view), query_view.shape[1], rng) for _ in range(n_views)])
    return (noisy / np.linalg.norm(noisy, axis=2, keepdims=True)).astype(np.float32)


def test_query_views_file_each_item_where_its_query_like_texts_route(views, tmp_path):
    query_view, item_view, queries = views
    texts = _query_view_texts(query_view, 3, np.random.default_rng(1))
    plain = DualViewIndex.build(query_view, item_view, nlist=12, niter=10, seed=0, nprobe=2, **UNREFINED)
    dual = DualViewIndex.build(query_view, item_view, nlist=12, niter=10, seed=0, nprobe=2, **UNREFINED,
                               query_view_texts=texts)
    # the coarse cells (the first SID level) do not depend on the filing
    np.testing.assert_array_equal(dual.centroids, plain.centroids)
    expected = [sorted({int(own)} | {int(dual.route(text[row:row + 1])[0]) for text in texts})
                for row, own in enumerate(dual.route(query_view))]
    lists = dual.list_assignments()
    assert lists.shape == (len(item_view), 4)
    assert [row[row >= 0].tolist() for row in lists] == expected
    assert dual.ntotal == sum(len(filed) for filed in expected) > plain.ntotal
    # a query that lands where an item's query-like text lands finds it with one probe
    item = next(row for row, filed in enumerate(expected) if len(filed) > 1)
    text_list = next(i for i in expected[item] if i != dual.route(query_view[item:item + 1])[0])
    view = next(text for text in texts if dual.route(text[item:item + 1])[0] == text_list)
    found = dual.search(view[item:item + 1], len(item_view), nprobe=1)[1][0]
    assert item in found.tolist()
    assert item not in plain.search(view[item:item + 1], len(item_view), nprobe=1)[1][0].tolist()
    # each item comes back once; probing every list is exact search
    for found in dual.search(queries, 50, nprobe=3)[1]:
        found = found[found >= 0]
        assert len(found) == len(set(found.tolist()))
    np.testing.assert_array_equal(dual.search(queries, 10, nprobe=12)[1], FlatIndex(item_view).search(queries, 10)[1])
    dual.save(tmp_path)
    loaded = DualViewIndex.load(tmp_path)
    assert (loaded.query_views, loaded.n_items, loaded.copies) == (3, len(item_view), 4)
    np.testing.assert_array_equal(loaded.list_assignments(), lists)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], dual.search(queries, 10)[1])


def test_query_view_texts_of_the_wrong_shape_are_rejected(views):
    query_view, item_view, _ = views
    with pytest.raises(ValueError, match=r"query view texts must be \[views, 1200, 16\]"):
        DualViewIndex.build(query_view, item_view, nlist=12, niter=10, seed=0, nprobe=2, **UNREFINED,
                            query_view_texts=query_view[None, :100])


def test_ivf_pq_keeps_the_cells_and_lists_and_stores_codes(views, tmp_path):
    query_view, item_view, queries = views
    flat = DualViewIndex.build(query_view, item_view, nlist=4, niter=10, seed=0, nprobe=4, **UNREFINED)
    pq = DualViewIndex.build(query_view, item_view, nlist=4, niter=10, seed=0, nprobe=4,
                             **{**UNREFINED, "pq_subquantizers": 4, "pq_bits": 4})
    assert isinstance(pq.index, faiss.IndexIVFPQ) and pq.index.code_size == 2      # 4 codes x 4 bits per item
    np.testing.assert_array_equal(pq.centroids, flat.centroids)
    np.testing.assert_array_equal(pq.list_assignments(), flat.list_assignments())
    exact = FlatIndex(item_view).search(queries, 10)[1]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pq.search(queries, 10)[1], exact)])
    assert 0.1 < overlap < 1.0        # every list probed: approximate scores (random rows would give .008)
    pq.save(tmp_path)
    loaded = DualViewIndex.load(tmp_path)
    assert isinstance(loaded.index, faiss.IndexIVFPQ)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], pq.search(queries, 10)[1])
    with pytest.raises(ValueError, match="divide the vector width 16"):
        DualViewIndex.build(query_view, item_view, nlist=4, niter=10, seed=0, nprobe=4,
                            **{**UNREFINED, "pq_subquantizers": 5})
