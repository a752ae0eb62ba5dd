"""Ranker settings chosen on the validation split: cross-validated NDCG@10 per LightGBM setting.

Features of the validation queries are computed once on the chain of the generative
benchmark (its cached stages, built when missing; `--quick`: its quick chain), for the `pool`
and `hybrid` candidate settings of params; then every setting of GRID trains `train_ranker` (5-fold CV by query inside the
validation split, as the ranker stage does) and prints its held-out NDCG@10. Test is never
read: this is how `ranker.lightgbm` in params.yaml is chosen.

Each row also carries the out-of-fold estimate (`oof_recall@10`, `oof_ndcg@10`: misses of the
candidate set count), which compares candidate settings too: `--grid base --overrides` with
extra `ranker.systems` entries (e.g. a pool of 40 SIDs) sweeps pool sizes and depths.

    .venv/bin/python benchmarks/ranker_sweep.py [--data PATH|demo] [--quick] [--seeds 0]
        [--grid full|base] [--systems pool hybrid ...]
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
import time

from common import benchmark_params, emit, log, parse_args, run_chain  # sets sys.path
from generative import QUICK  # the generative benchmark's quick run: the same cached chain

from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.ranking.ranker import RankerConfig, labels, train_ranker  # noqa: E402
from sid_models.ranking.stage import candidate_settings, load_featurizer, validation_estimate  # noqa: E402

BENCH = "ranker_sweep"
GRID = {"num_leaves": (15, 31, 63), "min_data_in_leaf": (50, 200)}


def own_arguments(parser) -> None:
    parser.add_argument("--grid", choices=("full", "base"), default="full",
                        help="base: only params' own LightGBM setting (to compare candidate settings)")
    parser.add_argument("--systems", nargs="+", default=None, help="ranker.systems entries to sweep (default: all)")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], own_arguments)
    params = benchmark_params(args, QUICK if args.quick else None)
    base = RankerConfig.from_params(params["ranker"])
    for seed in args.seeds:
        seeded = {**params, "seed": seed}
        folders = run_chain(seeded, args.quick, ("sft_checkpoint",), BENCH)
        prepared = PreparedDataset.load(folders["prepared_dataset"])
        relevant = prepared.relevant("valid")
        queries = prepared.split_queries("valid")
        queries = queries[queries["query_id"].isin(set(relevant["query_id"]))]
        featurizer = load_featurizer(seeded, folders)
        for system, system_params in params["ranker"]["systems"].items():
            if args.systems is not None and system not in args.systems:
                continue
            started = time.perf_counter()
            candidates = featurizer.candidates(queries["text"].astype(str).tolist(), candidate_settings(system_params))
            query_labels = labels(candidates, queries["query_id"].tolist(), featurizer.retriever.item_ids,
                                  prepared.split_judgments("valid"), prepared.scale, base.label_steps)
            log(f"[{BENCH}] {system} seed {seed}: features in {time.perf_counter() - started:.0f} s")
            grid = GRID if args.grid == "full" else {name: (getattr(base, name),) for name in GRID}
            for values in itertools.product(*grid.values()):
                config = dataclasses.replace(base, **dict(zip(grid, values)))
                _, summary, out_of_fold = train_ranker(candidates, query_labels, config, seed)
                estimate = validation_estimate(candidates, out_of_fold, queries["query_id"].tolist(),
                                               featurizer.retriever.item_ids, prepared)
                emit(BENCH, system, seed=seed, **dict(zip(grid, values)), pool_sids=system_params["pool_sids"],
                     rounds=summary["rounds"], cv_ndcg_at_10=round(summary["cv_ndcg@10"], 4),
                     cv_std=round(summary["cv_ndcg@10_std"], 4), **{key: round(value, 4) for key, value
                                                                      in estimate.items()})


if __name__ == "__main__":
    sys.exit(main())
