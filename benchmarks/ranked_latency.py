"""Where a served query's time goes in a ranked retriever: MiniLM, beam search, features, LightGBM.

Batch 1, from query text, on `serving.torch_threads` torch threads as served, over the first
LATENCY_QUERIES test queries, from the cached chain of the generative benchmark (run it
first). Prints one JSON line per ranker system with the median milliseconds of each part
and of the whole `search` call.

    .venv/bin/python benchmarks/ranked_latency.py [--seeds 0] [--overrides '{...}']
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from common import benchmark_params, emit, parse_args, prepared_dataset, run_chain, test_queries  # sets sys.path

from sid_models.ranking.stage import load_ranked_searcher  # noqa: E402

BENCH = "ranked_latency"
LATENCY_QUERIES = 64


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    params = benchmark_params(args)
    torch.set_num_threads(int(params["serving"]["torch_threads"]))
    for seed in args.seeds:
        seeded = {**params, "seed": seed}
        folders = run_chain(seeded, False, ("sft_checkpoint", "ranker"), BENCH, build=False)
        texts = test_queries(prepared_dataset(seeded))["text"].astype(str).tolist()[:LATENCY_QUERIES]
        for system in params["ranker"]["systems"]:
            searcher = load_ranked_searcher(seeded, folders, system)
            featurizer, settings = searcher.featurizer, searcher.settings
            searcher.search(texts[:1], 10)
            parts: dict[str, list[float]] = {"minilm": [], "beam": [], "features": [], "lightgbm": [], "total": []}
            for text in texts:
                started = time.perf_counter()
                sci_query = featurizer.query_tower([text], featurizer.encode_minilm([text]))
                encoded = time.perf_counter()
                featurizer.retriever.search_sids([text], max(featurizer.retriever.beam_size, settings.pool_sids),
                                                 sci_query)
                decoded = time.perf_counter()
                (found,) = featurizer.candidates([text], settings)    # encodes and decodes again, then features
                featurized = time.perf_counter()
                searcher.rank([found], 10)
                ranked = time.perf_counter()
                parts["minilm"].append(encoded - started)
                parts["beam"].append(decoded - encoded)
                parts["features"].append((featurized - decoded) - (decoded - started))
                parts["lightgbm"].append(ranked - featurized)
                started = time.perf_counter()
                searcher.search([text], 10)
                parts["total"].append(time.perf_counter() - started)
            emit(BENCH, system, seed=seed, pool_sids=settings.pool_sids,
                 mean_candidates=float(np.mean([len(found.rows) for found in featurizer.candidates(texts, settings)])),
                 **{f"{part}_p50_ms": round(1000 * float(np.median(values)), 1) for part, values in parts.items()})


if __name__ == "__main__":
    sys.exit(main())
