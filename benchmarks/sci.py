"""SCI benchmark: BM25, MiniLM zero-shot, dual tower (λ_swap = 0), dual tower + swap, and
swap + consistency term (`tower_swap_cons`), each searched exactly (`exact`), through IVF
with item-view centroids (`ivf_item`) and through the consistent dual-view IVF (`ivf_dual`,
centroids on the query view) at several nprobe, on the test split. One JSON line per (system, index, nprobe):
recall@K, ndcg@10, mrr, recall@10_cold / _seen, qps of the index at batch 256.

MiniLM has a single view (item = query view), so its `ivf_dual` equals `ivf_item` and is not
repeated. Towers and IVF run with `sci.train.threads` threads (1 by default: the machine is
shared), so qps are single-thread figures.

    .venv/bin/python benchmarks/sci.py [--data PATH|demo] [--quick] [--seeds 0 1]
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from common import benchmark_params, emit, log, parse_args, prepared_dataset

from sid_models.shared.metrics import evaluate
from sid_models.lexical.bm25 import BM25Retriever
from sid_models.sci.index import DualViewIndex, FlatIndex, n_lists, rankings
from sid_models.sci.stage import zero_shot_metrics
from sid_models.sci.towers import TowerConfig
from sid_models.sci.train import TrainConfig, limit_threads, train_towers
from sid_models.text.encoder import TextEncoder

BENCH = "sci"
K = 50
NPROBES = (1, 4, 16)
INDEX_NAMES = {"item": "ivf_item", "query": "ivf_dual"}  # coarse_view -> reported index name
QPS_BATCH = 256
QPS_MIN_QUERIES = 2048
REPORTED = ("recall@1", "recall@5", "recall@10", "recall@50", "ndcg@10", "mrr", "recall@10_cold",
            "recall@10_seen", "recall@10_head", "recall@10_torso", "recall@10_tail", "recall@10_multi",
            "n_queries")
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


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    params = benchmark_params(args, QUICK if args.quick else None)
    limit_threads(params["sci"]["train"]["threads"])
    prepared = prepared_dataset(params)
    test = prepared.split_queries("test")
    judged = prepared.split_judgments("test")
    query_ids, item_ids = test["query_id"].tolist(), prepared.items["item_id"].tolist()
    segment = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    log(f"{prepared.name}: {len(item_ids)} items, {len(test)} test queries")

    def score(rows: np.ndarray) -> dict:
        result = evaluate(rankings(rows, query_ids, item_ids), judged, prepared.scale, segment)
        return {key: result[key] for key in REPORTED if key in result}

    started = time.perf_counter()
    bm25 = BM25Retriever.from_params(prepared.item_text().tolist(), params["bm25"])
    _, rows = bm25.search(test["text"].tolist(), K)
    emit(BENCH, "bm25", index="bm25", nprobe=None, **score(rows), seconds=time.perf_counter() - started)

    encoder = TextEncoder.from_params(params["text"])
    item_base = encoder.encode(prepared.item_text().tolist(), "items")
    query_base = encoder.encode(prepared.queries["text"].tolist(), "queries")
    test_rows = test.index.to_numpy()
    settings = params["index"]
    nlist = n_lists(len(item_ids), settings["nlist"], settings["min_points_per_list"])
    log(f"IVF: {nlist} lists, nprobe {NPROBES}")

    def search_all(system: str, query_vectors: np.ndarray, item_query_view: np.ndarray, item_view: np.ndarray,
                   seed: int, views: tuple[str, ...], **extra) -> None:
        flat = FlatIndex(item_view)
        _, rows = flat.search(query_vectors, K)
        emit(BENCH, system, index="exact", nprobe=None, **score(rows), qps=throughput(flat, query_vectors, None),
             seed=seed, **extra)
        for view in views:
            built = time.perf_counter()
            index = DualViewIndex.build(item_query_view, item_view, nlist, settings["niter"], seed,
                                        settings["nprobe"], coarse_view=view)
            build_seconds = time.perf_counter() - built
            for nprobe in NPROBES:
                _, rows = index.search(query_vectors, K, nprobe)
                emit(BENCH, system, index=INDEX_NAMES[view], nprobe=nprobe, nlist=nlist, **score(rows),
                     qps=throughput(index, query_vectors, nprobe), build_seconds=build_seconds, seed=seed, **extra)

    search_all("minilm", query_base[test_rows], item_base, item_base, params["seed"], ("item",),
               valid_recall_at_10=zero_shot_metrics(prepared, item_base, query_base, "valid", 10)["recall@10"])

    tower_config = TowerConfig(in_dim=int(item_base.shape[1]), **params["sci"]["tower"])
    for seed in args.seeds:
        base_config = TrainConfig.from_params(params["sci"], seed)
        lambda_swap = base_config.lambda_swap or SWAP_LAMBDA
        variants = [("tower", {"lambda_swap": 0.0, "lambda_cons": 0.0}),
                    ("tower_swap", {"lambda_swap": lambda_swap})]
        if base_config.lambda_cons == 0:
            variants.append(("tower_swap_cons", {"lambda_swap": lambda_swap, "lambda_cons": CONSISTENCY_LAMBDA}))
        for system, overrides in variants:
            config = dataclasses.replace(base_config, **overrides)
            result = train_towers(prepared, item_base, query_base, tower_config, config, log=log)
            towers = result.towers
            log(f"{system} seed {seed}: best epoch {result.best_epoch}, {result.seconds:.0f} s")
            search_all(system, towers.encode_queries(query_base[test_rows]), towers.encode_queries(item_base),
                       towers.encode_items(item_base), seed, ("item", "query"),
                       train_seconds=result.seconds, best_epoch=result.best_epoch,
                       lambda_swap=config.lambda_swap, lambda_cons=config.lambda_cons,
                       valid_recall_at_10=result.best_valid["recall@10"],
                       valid_recall_at_10_untrained=result.history[0]["valid_recall@10"])


if __name__ == "__main__":
    main()
