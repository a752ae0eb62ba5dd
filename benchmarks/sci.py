"""SCI benchmark: BM25, MiniLM zero-shot, dual tower (λ_swap = 0), dual tower + swap, and
swap + consistency term (`tower_swap_cons`, with --consistency), for each tower kind and contrast loss
(`--losses`: InfoNCE or the SCI paper's triplet margin loss), each searched exactly (`exact`), through IVF
with item-view centroids (`ivf_item`) and through the consistent dual-view IVF (`ivf_dual`,
centroids on the query view) at nprobe 1-64, `--lists-per-cell` (IVF lists per first-level
cell), `--spill` (lists each item is filed in) and `--query-views` (query-like texts of each item whose
f_q also files it: the dual view; V < the largest asked are the first V of its texts) and `--pq` (IVF-PQ
sub-quantisers, index `<name>_pq<M>`; 0 = IVF-Flat), on the test split.
One JSON line per (system, seed, index, lists per cell, spill, query views, nprobe): recall@K, ndcg@10, mrr, recall@10_cold / _seen,
`recall@10_of_exact` (the share of exact search's recall@10 kept), `scanned` (mean stored vectors a
query is compared with), qps of the index at batch 256, and for trained towers their misalignment
(mean ‖f_q(x) − f_i(x)‖ and cos over items and queries, untrained and trained).
Then a summary line per (system, index, lists per cell, spill, query views, nprobe) row: mean and sample std over the seeds.

`--from-chain` trains nothing: per seed it reads the towers of the pipeline's `sci_towers` stage
(the shipped kind and recipe, cached by the benchmarks' chain, as `benchmarks/generative.py` builds
it) and reports them as the system `shipped`: the index rows on the towers the product serves.

MiniLM has a single view (item = query view), so its `ivf_dual` equals `ivf_item` and is not
repeated. With `--overrides '{"text": {"model_name": ...}}'` another base model (text/encoder.py
BASE_MODELS) feeds everything: its zero-shot row takes its short name (`mpnet`) and the tower systems end
in `_mpnet`. Towers and IVF run with `sci.train.threads` threads (1 by default: the machine is
shared), so qps are single-thread figures.

    .venv/bin/python benchmarks/sci.py [--data PATH|demo] [--quick] [--seeds 0 1 2] [--lists-per-cell 1 4]
        [--spill 1 2] [--query-views 0 3] [--pq 0 32] [--tower-kinds mlp minilm] [--losses info_nce triplet] [--consistency] [--systems tower]
        [--from-chain]
"""
from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from common import benchmark_params, emit, emit_summary, log, parse_args, prepared_dataset, run_chain

from sid_models.shared.metrics import evaluate
from sid_models.lexical.bm25 import BM25Retriever
from sid_models.sci.index import DualViewIndex, FlatIndex, n_lists, rankings
from sid_models.sci.stage import ITEM_VIEW_FILE, QUERIES_FILE, QUERY_VIEW_FILE, query_view_texts, zero_shot_metrics
from sid_models.sci.towers import load_towers
from sid_models.params import deep_merge
from sid_models.sci.train import (CONTRAST_LOSSES, TrainConfig, limit_threads, misalignment, new_towers,
                                  pseudo_query_inputs, tower_inputs, train_towers)
from sid_models.text.encoder import MINILM, TextEncoder, base_model

BENCH = "sci"
K = 50
NPROBES = (1, 2, 4, 8, 16, 32, 64)
INDEX_NAMES = {"item": "ivf_item", "query": "ivf_dual"}  # coarse_view -> reported index name
QPS_BATCH = 256
QPS_MIN_QUERIES = 2048
REPORTED = ("recall@1", "recall@5", "recall@10", "recall@50", "ndcg@10", "mrr", "recall@10_cold",
            "recall@10_seen", "recall@10_head", "recall@10_torso", "recall@10_tail", "recall@10_multi",
            "n_queries")
SUMMARISED = ("recall@10", "recall@50", "ndcg@10", "recall@10_cold", "recall@10_seen", "recall@10_of_exact", "scanned", "stored",
              "qps",
              "misalign_items_l2", "misalign_items_cos", "misalign_queries_l2", "misalign_queries_cos")
QUICK = {"sci": {"train": {"epochs": 2}}}
SWAP_LAMBDA = 1.0          # tower_swap when params set lambda_swap to 0
CONSISTENCY_LAMBDA = 1.0   # extra system tower_swap_cons (swap + consistency) when params leave lambda_cons at 0


def throughput(index, query_vectors: np.ndarray, nprobe: int | None) -> float:
    """Queries per second searching top-K in batches of QPS_BATCH (queries repeated up to QPS_MIN_QUERIES)."""
    repeats = int(np.ceil(QPS_MIN_QUERIES / len(query_vectors)))
    queries = np.tile(query_vectors, (repeats, 1))
    started = time.perf_counter()
    for start in range(0, len(queries), QPS_BATCH):
        index.search(queries[start:start + QPS_BATCH], K, nprobe)
    return len(queries) / (time.perf_counter() - started)


def own_arguments(parser) -> None:
    parser.add_argument("--lists-per-cell", type=int, nargs="+", default=None,
                        help="IVF lists per first-level cell to build (default: params index.lists_per_cell)")
    parser.add_argument("--spill", type=int, nargs="+", default=None,
                        help="lists each item is filed in, per index built (default: params index.spill)")
    parser.add_argument("--pq", type=int, nargs="+", default=None,
                        help="IVF-PQ sub-quantisers per index built, 0 = IVF-Flat (default: params index.pq_subquantizers)")
    parser.add_argument("--query-views", type=int, nargs="+", default=None,
                        help="query-like texts whose f_q also file each item, per index built "
                             "(default: params index.query_views.views)")
    parser.add_argument("--from-chain", action="store_true",
                        help="train nothing: index the chain's sci_towers stage per seed (system `shipped`)")
    parser.add_argument("--tower-kinds", nargs="+", default=None,
                        help="sci.tower.kinds rows to train (default: params sci.tower.kind); "
                             "a kind other than mlp names its systems <system>_<kind>")
    parser.add_argument("--losses", nargs="+", default=None, choices=CONTRAST_LOSSES,
                        help="sci.train.loss values to train (default: params); a loss other than params' "
                             "names its systems <system>_<loss>")
    parser.add_argument("--systems", nargs="+", default=None, choices=("tower", "tower_swap", "tower_swap_cons"),
                        help="train only these tower systems (default: all)")
    parser.add_argument("--consistency", action="store_true",
                        help="also train tower_swap_cons (swap + consistency term, λ_cons 1)")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], own_arguments)
    params = benchmark_params(args, QUICK if args.quick else None)
    limit_threads(params["sci"]["train"]["threads"])
    prepared = prepared_dataset(params)
    test = prepared.split_queries("test")
    judged = prepared.split_judgments("test")
    query_ids, item_ids = test["query_id"].tolist(), prepared.items["item_id"].tolist()
    segment = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    log(f"{prepared.name}: {len(item_ids)} items, {len(test)} test queries")
    results: dict[str, list[dict]] = {}

    def score(rows: np.ndarray) -> dict:
        result = evaluate(rankings(rows, query_ids, item_ids), judged, prepared.scale, segment)
        return {key: result[key] for key in REPORTED if key in result}

    def record(system: str, index: str, lists_per_cell: int | None, nprobe: int | None, spill: int | None = None,
               query_views: int | None = None, **fields) -> None:
        emit(BENCH, system, index=index, lists_per_cell=lists_per_cell, spill=spill, query_views=query_views,
             nprobe=nprobe, **fields)
        row = "/".join(str(part) for part in (system, index, lists_per_cell, spill and f"spill{spill}",
                                              f"qv{query_views}" if query_views else None, nprobe)
                       if part is not None)
        results.setdefault(row, []).append(fields)

    started = time.perf_counter()
    bm25 = BM25Retriever.from_params(prepared.item_text().tolist(), params["bm25"])
    _, rows = bm25.search(test["text"].tolist(), K)
    record("bm25", "bm25", None, None, **score(rows), seconds=time.perf_counter() - started)

    encoder = TextEncoder.from_params(params["text"])
    item_base = encoder.encode(prepared.item_text().tolist(), "items")
    query_base = encoder.encode(prepared.queries["text"].tolist(), "queries")
    test_rows = test.index.to_numpy()
    settings = params["index"]
    nlist = n_lists(len(item_ids), settings["nlist"], settings["min_points_per_list"])
    lists_per_cell = args.lists_per_cell or [settings["lists_per_cell"]]
    spills = args.spill or [settings["spill"]]
    query_views = args.query_views or [settings["query_views"]["views"]]
    pqs = args.pq if args.pq is not None else [settings["pq_subquantizers"]]
    view_params = deep_merge(params, {"index": {"query_views": {"views": max(query_views)}}})
    titles = prepared.items["title"].astype(str).tolist()
    log(f"IVF: {nlist} cells x {lists_per_cell} lists per cell, spill {spills}, query views {query_views}, "
        f"nprobe {NPROBES}")

    def search_all(system: str, query_vectors: np.ndarray, item_query_view: np.ndarray, item_view: np.ndarray,
                   seed: int, views: tuple[str, ...], towers=None, **extra) -> None:
        """Exact search, then each index of `views` x lists per cell x spill x query views (those need
        the query tower `towers`) at every nprobe."""
        flat = FlatIndex(item_view)
        _, rows = flat.search(query_vectors, K)
        exact = score(rows)
        record(system, "exact", None, None, **exact, qps=throughput(flat, query_vectors, None), seed=seed, **extra)
        texts = None if towers is None else query_view_texts(towers, titles, view_params, seed, progress=False)
        for view in views:
            for per_cell, spill, n_views, pq in itertools.product(lists_per_cell, spills,
                                                                  query_views if towers is not None else [0], pqs):
                built = time.perf_counter()
                index = DualViewIndex.build(item_query_view, item_view, nlist, settings["niter"], seed, 1,
                                            coarse_view=view, lists_per_cell=per_cell,
                                            min_points_per_list=settings["min_points_per_list"], spill=spill,
                                            query_view_texts=None if texts is None else texts[:n_views],
                                            pq_subquantizers=pq, pq_bits=settings["pq_bits"])
                build_seconds = time.perf_counter() - built
                for nprobe in (n for n in NPROBES if n <= index.nlist):
                    _, rows = index.search(query_vectors, K, nprobe)
                    figures = score(rows)
                    record(system, INDEX_NAMES[view] + (f"_pq{pq}" if pq else ""), per_cell, nprobe, spill, n_views,
                           nlist=index.nlist,
                           stored=index.ntotal, **figures,
                           **{"recall@10_of_exact": figures["recall@10"] / exact["recall@10"]},
                           scanned=float(index.scanned(query_vectors, nprobe).mean()),
                           qps=throughput(index, query_vectors, nprobe), build_seconds=build_seconds, seed=seed,
                           **extra)

    # a base model other than MiniLM names its zero-shot row after itself and suffixes the tower systems
    zero_shot = base_model(params["text"]["model_name"]).short
    text_suffix = "" if params["text"]["model_name"] == MINILM else f"_{zero_shot}"
    search_all(zero_shot, query_base[test_rows], item_base, item_base, params["seed"], ("item",),
               valid_recall_at_10=zero_shot_metrics(prepared, item_base, query_base, "valid", 10)["recall@10"])

    if args.from_chain:
        for seed in args.seeds:
            towers = run_chain({**params, "seed": seed}, args.quick, ("sci_towers",), BENCH)["sci_towers"]
            search_all("shipped", np.load(towers / QUERIES_FILE)[test_rows], np.load(towers / QUERY_VIEW_FILE),
                       np.load(towers / ITEM_VIEW_FILE), seed, ("item", "query"), load_towers(towers),
                       tower_kind=params["sci"]["tower"]["kind"])
        emit_summary(BENCH, results, SUMMARISED)
        return

    shipped_loss = params["sci"]["train"]["loss"]
    for kind, loss in itertools.product(args.tower_kinds or [params["sci"]["tower"]["kind"]],
                                        args.losses or [shipped_loss]):
        sci = deep_merge(params["sci"], {"tower": {"kind": kind}, "train": {"loss": loss}})
        suffix = ("" if kind == "mlp" else f"_{kind}") + ("" if loss == shipped_loss else f"_{loss}") + text_suffix
        for seed in args.seeds:
            base_config = TrainConfig.from_params(sci, seed)
            lambda_swap = base_config.lambda_swap or SWAP_LAMBDA
            variants = [("tower", {"lambda_swap": 0.0, "lambda_cons": 0.0}),
                        ("tower_swap", {"lambda_swap": lambda_swap})]
            if base_config.lambda_cons == 0 and args.consistency:
                variants.append(("tower_swap_cons", {"lambda_swap": lambda_swap, "lambda_cons": CONSISTENCY_LAMBDA}))
            for system, overrides in (v for v in variants if args.systems is None or v[0] in args.systems):
                config = dataclasses.replace(base_config, **overrides)
                towers = new_towers(sci["tower"], params["text"], prepared, item_base, query_base, config)
                item_inputs, query_inputs = tower_inputs(towers, prepared, item_base, query_base, params["text"])
                pseudo = pseudo_query_inputs(towers, prepared, config, params["text"])
                result = train_towers(prepared, towers, item_inputs, query_inputs, config, log=log, pseudo=pseudo)
                towers = result.towers
                untrained = {f"{key}_untrained": value for key, value in result.history[0].items()
                             if key.startswith("misalign_")}
                log(f"{system}{suffix} seed {seed}: best epoch {result.best_epoch}, {result.seconds:.0f} s")
                query_vectors = towers.encode_queries(query_inputs)
                search_all(system + suffix, query_vectors[test_rows], towers.encode_queries(item_inputs),
                           towers.encode_items(item_inputs), seed, ("item", "query"), towers, tower_kind=kind,
                           train_seconds=result.seconds, best_epoch=result.best_epoch,
                           loss=config.loss, lambda_swap=config.lambda_swap, lambda_cons=config.lambda_cons,
                           pseudo_per_pair=config.pseudo_queries["per_pair"],
                           valid_recall_at_10=result.best_valid["recall@10"],
                           valid_recall_at_10_untrained=result.history[0]["valid_recall@10"],
                           **misalignment(towers, item_inputs, query_inputs), **untrained)
    emit_summary(BENCH, results, SUMMARISED)


if __name__ == "__main__":
    main()
