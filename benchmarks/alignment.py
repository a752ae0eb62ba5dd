"""Alignment benchmark: SFT vs vanilla DPO vs RAD-DPO and RAD-DPO with each part switched off.

Runs the pipeline's own stages (sid_models.stages) up to sft_checkpoint once, mines the
preference table once from that SFT model (align.seed), then per seed trains every aligned
system from the same SFT checkpoint with the same budget (align.train) and evaluates all of
them on the test split with the shared metrics. Seeds vary what alignment training draws
(batch order, pairwise samples, the RDRW warm-up order); the SFT model is trained once, so
its line repeats the same figures for every seed.

Output: one JSON line per (system, seed) with recall@10, ndcg@10, recall@10_multi,
n_queries, seconds (alignment training time). Upstream stage folders are cached under
artifacts/bench/chain/<quick|full>/<stage>-<hash of its params sections and inputs>, shared
with the generative benchmark (so its SFT model is reused), and a rerun reuses a stage only
when nothing it reads changed; aligned models go to artifacts/bench/alignment/.

--quick shrinks the upstream chain only (demo store of 800 items / 900 queries, 3 SCI
epochs, 100 ACRQ steps per phase, 150 SFT steps of 128, no TIGER model); the alignment
budget stays align.train's.

  .venv/bin/python benchmarks/alignment.py --data demo --quick --seeds 0 1 2 3 4
  .venv/bin/python benchmarks/alignment.py --seeds 0 1 2 --eval-only --bucket-pool 1

A summary line per system gives mean and sample standard deviation over the seeds.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import (add_bucket_pool_argument, benchmark_params, bucket_pool, emit, emit_summary, log, parse_args,  # sets sys.path
                    run_chain, test_metrics, test_queries)

from sid_models.align.trainer import SYSTEMS, prepare_preferences, train_alignment  # noqa: E402
from sid_models.sci.stage import QUERIES_FILE as SCI_QUERIES_FILE  # noqa: E402
from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.generative.retriever import copy_retriever_assets  # noqa: E402
from sid_models.generative.train import DistContext  # noqa: E402
from sid_models.params import REPO_ROOT  # noqa: E402

BENCH = "alignment"
ORDER = ("sft", *SYSTEMS)
EVAL_K = 10
WORK = REPO_ROOT / "artifacts" / "bench" / BENCH
QUICK = {
    "sft": {"train_tiger_baseline": False},
    "demo": {"n_items": 800, "n_queries": 900},
    "sci": {"train": {"epochs": 3}},
    "acrq": {"max_steps_per_phase": 100},
    "generative": {"preset": "cpu", "presets": {"cpu": {"sft": {"steps": 150, "batch_size": 128}}}},
}


def split_metrics(checkpoint: Path, folders: dict[str, Path], prepared: PreparedDataset, pool: int) -> dict:
    """Test-split figures of one aligned (or the SFT) checkpoint."""
    from sid_models.generative.retriever import load_retriever

    queries = test_queries(prepared)
    retriever = load_retriever(checkpoint, folders["semantic_ids"], folders["prepared_dataset"], folders["sci_index"],
                               variant="sarq_acrq", bucket_pool=pool)
    metrics = test_metrics(prepared, queries, retriever.search(queries["text"].astype(str).tolist(), EVAL_K))
    return {key: metrics[key] for key in ("recall@10", "ndcg@10", "recall@10_multi", "n_queries")}


def own_arguments(parser) -> None:
    parser.add_argument("--eval-only", action="store_true",
                        help="score the aligned checkpoints a previous run left; train nothing")
    add_bucket_pool_argument(parser)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], own_arguments)
    params = benchmark_params(args, QUICK if args.quick else None)
    torch.set_num_threads(int(params["generative"]["threads"]))
    work = WORK / ("quick" if args.quick else "full")
    log(f"[{BENCH}] data={args.data} quick={args.quick} seeds={args.seeds} work={work}")
    folders = run_chain(params, args.quick, ("sft_checkpoint", "sci_towers"), BENCH)
    prepared = PreparedDataset.load(folders["prepared_dataset"])
    pool = bucket_pool(args, params)
    torch.set_num_threads(int(params["align"]["threads"]))
    dist = DistContext(device=torch.device("cpu"))
    if not args.eval_only:
        started = time.perf_counter()
        _, data = prepare_preferences(params, prepared, folders["sft_checkpoint"], folders["semantic_ids"],
                                      sci_queries=np.load(folders["sci_towers"] / SCI_QUERIES_FILE))
        log(f"[{BENCH}] mined preferences of {data.n_queries} queries, {len(data.targets)} sequences "
            f"in {time.perf_counter() - started:.0f} s")
    sft_figures = split_metrics(folders["sft_checkpoint"], folders, prepared, pool)
    results: dict[str, list[dict]] = {system: [] for system in ORDER}
    for seed in args.seeds:
        emit(BENCH, "sft", seed=seed, bucket_pool=pool, seconds=0.0, **sft_figures)
        results["sft"].append(sft_figures)
        for system in SYSTEMS:
            out = work / "aligned" / f"seed{seed}" / system
            timing = {}
            if args.eval_only:
                if not (out / "model.pt").is_file():
                    raise FileNotFoundError(f"--eval-only: no aligned checkpoint at {out}; run without it first")
            else:
                shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                train_alignment(params, system, data, folders["sft_checkpoint"], out, dist=dist, progress=False,
                                seed=seed)
                timing["seconds"] = round(time.perf_counter() - started, 1)
                copy_retriever_assets(folders["sft_checkpoint"], out)
            figures = split_metrics(out, folders, prepared, pool)
            emit(BENCH, system, seed=seed, bucket_pool=pool, **timing, **figures)
            results[system].append(figures)
    emit_summary(BENCH, results, ("recall@10", "ndcg@10", "recall@10_multi"))


if __name__ == "__main__":
    sys.exit(main())
