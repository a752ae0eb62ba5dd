"""Where a served query's time goes in a ranked retriever: MiniLM, beam search, features, LightGBM.

Batch 1, from query text, on `serving.torch_threads` torch threads as served, over the first
LATENCY_QUERIES test queries, on the chain of the generative benchmark (its cached stages, built
when missing; `--quick`: its quick chain). Prints one JSON line per ranker system with the
median milliseconds of each part and of the whole `search` call; with `--pyfunc`, also `pyfunc_p50_ms` / `pyfunc_p95_ms`: the
same ranked retriever logged as the registry logs it (`log_retriever`, into a throw-away
SQLite MLflow store), loaded back with `mlflow.pyfunc.load_model` and called with one-row
DataFrames, which is what a served query costs before HTTP.

    .venv/bin/python benchmarks/ranked_latency.py [--data PATH|demo] [--quick] [--seeds 0] [--pyfunc]
        [--overrides '{...}']
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import benchmark_params, emit, parse_args, prepared_dataset, run_chain, test_queries  # sets sys.path
from generative import QUICK  # the generative benchmark's quick run: the same cached chain

from sid_models.ranking.stage import load_ranked_searcher  # noqa: E402

BENCH = "ranked_latency"
LATENCY_QUERIES = 64


def pyfunc_latency_ms(params: dict, folders: dict, system: str, texts: list[str]) -> np.ndarray:
    """Milliseconds per one-query predict of the ranked retriever as the registry logs it."""
    import tempfile

    import mlflow
    import pandas as pd

    from sid_models.serving.pyfunc import log_retriever

    previous = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        try:
            experiment = mlflow.create_experiment("ranked_latency", artifact_location=Path(store, "artifacts").as_uri())
            with mlflow.start_run(experiment_id=experiment):
                info = log_retriever(params, folders["sft_checkpoint"], folders["semantic_ids"],
                                     folders["prepared_dataset"], ranker=folders["ranker"] / system,
                                     text_embeddings=folders["text_embeddings"])
            model = mlflow.pyfunc.load_model(info.model_uri)
            frames = [pd.DataFrame({"query": [text]}) for text in texts]
            model.predict(frames[0], params={"k": 10})
            timings = []
            for frame in frames:
                started = time.perf_counter()
                model.predict(frame, params={"k": 10})
                timings.append(1000 * (time.perf_counter() - started))
        finally:
            mlflow.set_tracking_uri(previous)
    return np.array(timings)


def own_arguments(parser) -> None:
    parser.add_argument("--pyfunc", action="store_true", help="also time each ranker through the logged pyfunc model")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], own_arguments)
    params = benchmark_params(args, QUICK if args.quick else None)
    torch.set_num_threads(int(params["serving"]["torch_threads"]))
    for seed in args.seeds:
        seeded = {**params, "seed": seed}
        folders = run_chain(seeded, args.quick, ("sft_checkpoint", "ranker"), BENCH)
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
            served = {}
            if args.pyfunc:
                timings = pyfunc_latency_ms(seeded, folders, system, texts)
                torch.set_num_threads(int(params["serving"]["torch_threads"]))
                served = {"pyfunc_p50_ms": round(float(np.percentile(timings, 50)), 1),
                          "pyfunc_p95_ms": round(float(np.percentile(timings, 95)), 1)}
            emit(BENCH, system, seed=seed, pool_sids=settings.pool_sids, **served,
                 mean_candidates=float(np.mean([len(found.rows) for found in featurizer.candidates(texts, settings)])),
                 **{f"{part}_p50_ms": round(1000 * float(np.median(values)), 1) for part, values in parts.items()})


if __name__ == "__main__":
    sys.exit(main())
