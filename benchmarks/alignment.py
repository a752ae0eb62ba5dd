"""Alignment benchmark: SFT and every system of params `align.systems`, under the shipped decoding and in beam order.

Per seed, the pipeline's own stages (sid_models.stages) up to `sft_checkpoint` and `ranker`
run (or are reused) with that seed, so the towers, SIDs, SFT model and pool ranker are the
seed's own, as in benchmarks/generative.py (the two share the stage cache). Preferences are
mined from that SFT model once per distinct `align.mining` (seeded by the same seed), then
each system is aligned from it with the same budget (`align.train`) and scored on the test
split two ways:

- `shipped_*`: the shipped decoding, the pool ranker (`ranker.systems.pool`, trained on
  validation over the SFT model's pool) over the aligned checkpoint's pool: what users get;
  with `shipped_pool_coverage` (share of relevant test items inside the pool). With
  `--refit-ranker` each aligned checkpoint gets its own pool ranker instead, trained the way
  the ranker stage trains SFT's (`ranking.stage.fit_ranker`: validation split, the same
  params and seed) over that checkpoint's own features: alignment moves the beam scores and
  ranks the ranker reads, so a ranker fitted on SFT's pool scores an aligned pool off the
  distribution it learnt; the row then carries `ranker_oof_ndcg@10` (its out-of-fold
  validation estimate, comparable with SFT's) and `ranker_seconds`;
- `beam_*`: strictly in beam order (`decode.bucket_pool` 1, no ranker): the generation alone;
- `valid_ndcg@10`: the validation figure the dpo_checkpoint stage and the registry choose by
  (`align.stage.validation_metrics`), and `shipped_valid_ndcg@10`: the shipped decoding on the
  validation queries (in-sample for the ranker, which was fit there over the SFT model's pool,
  so it leans toward SFT; with `--refit-ranker` it is in-sample for every row alike): a choice between systems is made on these, never on test. Both are
  over the validation queries the system did not mine (`align.mining.queries: valid` mines
  some), so each aligned row also carries SFT's figures over the same queries (`sft_*`).

Output: one JSON line per (system, seed) with those figures, `seconds` (alignment training)
and `mining_seconds`; then a summary line per system with mean and sample std over the seeds.
Aligned models go to artifacts/bench/alignment/<quick|full>/seed<N>/<system>/.

  .venv/bin/python benchmarks/alignment.py --seeds 0 1 2
  .venv/bin/python benchmarks/alignment.py --data demo --quick --seeds 0 --systems rad_dpo dpo
  .venv/bin/python benchmarks/alignment.py --seeds 0 1 2 --eval-only
  .venv/bin/python benchmarks/alignment.py --seeds 0 1 2 --refit-ranker

--quick shrinks the upstream chain only (demo store of 800 items / 900 queries, 3 SCI
epochs, 100 ACRQ steps per phase, 150 SFT steps of 128, no TIGER model, a small ranker);
the alignment budget stays align.train's.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from common import (benchmark_params, emit, emit_summary, judged_queries, log, parse_args, run_chain,  # sets sys.path
                    split_metrics, test_metrics, test_queries)

from sid_models.align.trainer import (mining_of, prepare_preferences, system_names,  # noqa: E402
                                      system_params, train_alignment)
from sid_models.align.mining import preference_summary, selection_dataset, selection_key  # noqa: E402
from sid_models.align.stage import validation_metrics  # noqa: E402
from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.generative.retriever import copy_retriever_assets, load_retriever  # noqa: E402
from sid_models.shared.training import DistContext  # noqa: E402
from sid_models.params import REPO_ROOT  # noqa: E402
from sid_models.ranking.ranker import RankedSearcher, RankerConfig  # noqa: E402
from sid_models.ranking.stage import coverage, fit_ranker, load_featurizer, load_ranked_searcher  # noqa: E402

BENCH = "alignment"
EVAL_K = 10
RANKER = "pool"
WORK = REPO_ROOT / "artifacts" / "bench" / BENCH
QUICK = {
    "sft": {"baselines": {"tiger": None}},
    "demo": {"n_items": 800, "n_queries": 900},
    "sci": {"train": {"epochs": 3}},
    "acrq": {"max_steps_per_phase": 100},
    "generative": {"preset": "cpu", "presets": {"cpu": {"sft": {"steps": 150, "batch_size": 128}}}},
    "ranker": {"lightgbm": {"max_rounds": 60, "folds": 3}},
}
METRICS = ("recall@10", "ndcg@10", "recall@10_multi", "recall@10_cold")
SUMMARISED = tuple(f"{way}_{key}" for way in ("shipped", "beam") for key in METRICS) + (
    "shipped_pool_coverage", "shipped_valid_ndcg@10", "valid_ndcg@10", "ranker_oof_ndcg@10", "seconds")


def figures(checkpoint: Path, searcher: RankedSearcher, folders: dict[str, Path], prepared: PreparedDataset) -> dict:
    """Test-split figures of one checkpoint under the shipped decoding (`searcher`, the pool
    ranker over that checkpoint) and in beam order."""
    queries = test_queries(prepared)
    texts = queries["text"].astype(str).tolist()
    candidates = searcher.featurizer.candidates(texts, searcher.settings)
    shipped = test_metrics(prepared, queries, searcher.rank(candidates, EVAL_K))
    beam = load_retriever(checkpoint, folders["semantic_ids"], folders["prepared_dataset"],
                          bucket_pool=1)
    in_order = test_metrics(prepared, queries, beam.search(texts, EVAL_K))
    result = {f"shipped_{key}": shipped[key] for key in METRICS if key in shipped}
    result.update({f"beam_{key}": in_order[key] for key in METRICS if key in in_order})
    result["shipped_pool_coverage"] = coverage([found.rows for found in candidates], queries["query_id"].tolist(),
                                               searcher.featurizer.retriever.item_ids, prepared.relevant("test"))
    result["n_queries"] = shipped["n_queries"]
    return result


def valid_figures(checkpoint: Path, searcher: RankedSearcher, params: dict, folders: dict[str, Path],
                  selection: PreparedDataset) -> dict:
    """Validation figures of one checkpoint over the validation split of `selection`
    (`mining.selection_dataset`: the validation queries the alignment did not mine)."""
    valid = judged_queries(selection, "valid")
    found = searcher.rank(searcher.featurizer.candidates(valid["text"].astype(str).tolist(), searcher.settings), EVAL_K)
    return {"shipped_valid_ndcg@10": split_metrics(selection, "valid", valid, found)["ndcg@10"],
            "valid_ndcg@10": validation_metrics(checkpoint, folders, selection, params, torch.device("cpu"))["ndcg@10"],
            "n_valid_queries": len(valid)}


def refitted_searcher(params: dict, folders: dict[str, Path], checkpoint: Path,
                      prepared: PreparedDataset) -> tuple[RankedSearcher, dict]:
    """The pool ranker trained afresh over `checkpoint`'s candidates, and its figures for the row."""
    featurizer = load_featurizer(params, folders, checkpoint)
    booster, candidate, training = fit_ranker(featurizer, prepared, params["ranker"]["systems"][RANKER],
                                              RankerConfig.from_params(params["ranker"]), int(params["seed"]))
    return RankedSearcher(featurizer, booster, candidate), {"ranker_oof_ndcg@10": training["oof_ndcg@10"],
                                                           "ranker_seconds": round(training["seconds"], 1)}


def own_arguments(parser) -> None:
    parser.add_argument("--systems", nargs="+", default=None, help="rows of align.systems (default: all of them)")
    parser.add_argument("--eval-only", action="store_true",
                        help="score the aligned checkpoints a previous run left; train nothing")
    parser.add_argument("--refit-ranker", action="store_true",
                        help="score each aligned checkpoint with a pool ranker fitted on its own validation pool")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], own_arguments)
    params = benchmark_params(args, QUICK if args.quick else None)
    systems = tuple(args.systems or system_names(params))
    for system in systems:
        system_params(params, system)               # an unknown name fails before any training
    work = WORK / ("quick" if args.quick else "full")
    log(f"[{BENCH}] data={args.data} quick={args.quick} seeds={args.seeds} systems={systems} work={work}")
    dist = DistContext(device=torch.device("cpu"))
    results: dict[str, list[dict]] = {system: [] for system in ("sft", *systems)}
    for seed in args.seeds:
        seeded = {**params, "seed": seed, "align": {**params["align"], "seed": seed}}
        torch.set_num_threads(int(params["generative"]["threads"]))
        folders = run_chain(seeded, args.quick, ("sft_checkpoint", "ranker", "sci_towers"), BENCH)
        prepared = PreparedDataset.load(folders["prepared_dataset"])
        torch.set_num_threads(int(params["align"]["threads"]))
        sft_valid: dict[tuple, dict] = {}      # SFT's validation figures per selection (selection_key)

        def selected(system: str | None) -> tuple[PreparedDataset, dict]:
            """The system's selection view and SFT's validation figures over it."""
            mining = seeded["align"]["mining"] if system is None else mining_of(seeded, system)
            key = selection_key(mining)
            selection = selection_dataset(prepared, mining, seed)
            if key not in sft_valid:
                sft_valid[key] = valid_figures(folders["sft_checkpoint"], sft_searcher, seeded, folders, selection)
            return selection, sft_valid[key]

        sft_searcher = load_ranked_searcher(seeded, folders, RANKER)
        sft_ranker = json.loads((folders["ranker"] / RANKER / "ranker.json").read_text())["training"]
        results["sft"].append({**figures(folders["sft_checkpoint"], sft_searcher, folders, prepared),
                               **selected(None)[1], "ranker_oof_ndcg@10": sft_ranker["oof_ndcg@10"]})
        emit(BENCH, "sft", seed=seed, seconds=0.0, **results["sft"][-1])
        mined: dict[str, tuple] = {}
        for system in systems:
            out = work / f"seed{seed}" / system
            timing = {}
            if args.eval_only:
                if not (out / "model.pt").is_file():
                    raise FileNotFoundError(f"--eval-only: no aligned checkpoint at {out}; run without it first")
            else:
                key = json.dumps(mining_of(seeded, system), sort_keys=True)
                if key not in mined:
                    started = time.perf_counter()
                    preferences, data = prepare_preferences(
                        seeded, system, prepared, folders["sft_checkpoint"], folders["semantic_ids"],
                        towers=folders["sci_towers"])
                    mined[key] = (data, round(time.perf_counter() - started, 1))
                    log(f"[{BENCH}] seed {seed} {system}: mined {preference_summary(preferences)} "
                        f"in {mined[key][1]} s")
                data, timing["mining_seconds"] = mined[key]
                shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                train_alignment(seeded, system, data, folders["sft_checkpoint"], out, dist=dist, progress=False)
                timing["seconds"] = round(time.perf_counter() - started, 1)
                copy_retriever_assets(folders["sft_checkpoint"], out)
            selection, sft_figures = selected(system)
            if args.refit_ranker:
                searcher, ranker_figures = refitted_searcher(seeded, folders, out, prepared)
            else:
                searcher, ranker_figures = load_ranked_searcher(seeded, folders, RANKER, checkpoint=out), {}
            results[system].append({**figures(out, searcher, folders, prepared), **ranker_figures,
                                    **valid_figures(out, searcher, seeded, folders, selection),
                                    **{f"sft_{key}": value for key, value in sft_figures.items() if key != "n_valid_queries"},
                                    **timing})
            emit(BENCH, system, seed=seed, **results[system][-1])
    emit_summary(BENCH, results, SUMMARISED)


if __name__ == "__main__":
    sys.exit(main())
