"""Generative retrieval benchmark: BM25, TIGER vs SARQ+ACRQ SIDs, the pool ranker, hybrid; decoder speed.

Quality, one row per system and seed, on the test queries with a relevant item, through the
shared `evaluate`: recall@10, ndcg@10, recall@10_cold, recall@10_seen, recall@10_multi, mrr.
The pipeline's own stages up to sft_checkpoint (both SFT models with the same size and step
budget on the same split) and `ranker` (LightGBM on the validation split) feed:
- `bm25`: stemmed BM25 (params `bm25`), the lexical anchor;
- `gr_tiger`, `gr_sarq_acrq_no_ranker`: `load_retriever(...).search` — the items of the top
  `decode.bucket_pool` SIDs ordered by SCI score — with the unconstrained invalid-SID rate;
- `gr_sarq_acrq`: the shipped recipe, the pool ranker (`ranker.systems.pool`) over the items
  of the top decoded SIDs;
- `hybrid`: the hybrid ranker over that pool ∪ BM25 top-N ∪ dense top-N.
Ranked rows carry `pool_coverage` (share of the relevant test pairs among the candidates) and
p50/p95 ms at batch 1 (64 test queries, from query text: MiniLM, decoding, features, ranker),
with the served model's `serving.torch_threads`.

Speed (`decode_tensor`, `decode_reference`): the SARQ+ACRQ model's weights under the
tensorised trie (`TrieConstraint`) and under the reference (`DictTrieConstraint`: a Python
`prefix_allowed_tokens`-style function per hypothesis over a dict trie), both inside the
same beam loop: qps at batch 64 / beam 20, p50/p95 ms at batch 1, and `identical` (true
when both returned the same ranked SIDs with equal scores for every timed query, so the
same top-K items).

Stage folders are cached under artifacts/bench/chain/<quick|full>/<stage>-<key> (shared with
the alignment benchmark), the key hashing the params a stage reads and its inputs' keys.

  .venv/bin/python benchmarks/generative.py [--data PATH|demo] [--quick] [--speed-only] [--bucket-pool N]
      [--unranked-only] [--no-speed]
"""
from __future__ import annotations

import json
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from common import (add_bucket_pool_argument, benchmark_params, bucket_pool, emit, emit_summary, log,  # sets sys.path
                    parse_args, run_chain, test_metrics, test_queries)

from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.eval.harness import latency_ms  # noqa: E402
from sid_models.eval.systems import generative_checkpoint, load_bm25, system_rows  # noqa: E402
from sid_models.ranking.stage import coverage, load_ranked_searcher  # noqa: E402
from sid_models.ranking.features import FEATURES  # noqa: E402
from sid_models.generative.retriever import load_retriever  # noqa: E402
from sid_models.generative.stage import VALIDATION_FILE  # noqa: E402
from sid_models.generative.trie import DictTrieConstraint, TrieConstraint, UnconstrainedConstraint, invalid_rate  # noqa: E402

BENCH = "generative"
EVAL_K = 10
LATENCY_QUERIES = 64       # ranked systems: test queries timed one at a time (batch 1, from query text)
SPEED_BATCH, SPEED_BEAMS = 64, 20
QUICK = {
    "demo": {"n_items": 800, "n_queries": 900},
    "sci": {"train": {"epochs": 3}},
    "generative": {"preset": "cpu", "presets": {"cpu": {"sft": {"steps": 150, "batch_size": 64}}}},
    "sft": {"warmup_steps": 15, "valid_max_queries": 100},
}
UNRANKED = ("gr_tiger", "gr_sarq_acrq_no_ranker")              # eval.systems rows decoded without a ranker
RANKED = {"gr_sarq_acrq": "pool", "hybrid": "hybrid"}          # system -> ranker.systems entry
TOP_SIDS = 20
BEAM_RANK = FEATURES.index("beam_rank")
REPORTED = ("recall@10", "ndcg@10", "recall@10_cold", "recall@10_seen", "recall@10_multi", "mrr", "n_queries")


def quality_of(searcher, prepared: PreparedDataset, queries) -> dict:
    metrics = test_metrics(prepared, queries, searcher.search(queries["text"].astype(str).tolist(), EVAL_K))
    return {key: metrics[key] for key in REPORTED if key in metrics}


def ranked_quality(params: dict, folders: dict, ranker_system: str, prepared: PreparedDataset, queries) -> dict:
    searcher = load_ranked_searcher(params, folders, ranker_system)
    candidates = searcher.featurizer.candidates(queries["text"].astype(str).tolist(), searcher.settings)
    metrics = test_metrics(prepared, queries, searcher.rank(candidates, EVAL_K))
    training = json.loads((folders["ranker"] / ranker_system / "ranker.json").read_text())["training"]
    threads = torch.get_num_threads()
    torch.set_num_threads(int(params["serving"]["torch_threads"]))     # as the served model runs
    timings = latency_ms(searcher, queries["text"].astype(str).tolist()[:LATENCY_QUERIES], EVAL_K)
    torch.set_num_threads(threads)
    return {**{key: metrics[key] for key in REPORTED if key in metrics},
            "pool_coverage": coverage([found.rows for found in candidates], queries["query_id"].tolist(),
                                      searcher.featurizer.retriever.item_ids, prepared.relevant("test")),
            # the yardstick: the items of the first 20 SIDs of the beam
            "pool_coverage_20_sids": coverage([found.rows[found.features[:, BEAM_RANK] < TOP_SIDS] for found in candidates],
                                              queries["query_id"].tolist(), searcher.featurizer.retriever.item_ids,
                                              prepared.relevant("test")),
            "mean_candidates": float(np.mean([len(found.rows) for found in candidates])),
            "channels": list(searcher.settings.channels), "pool_sids": searcher.settings.pool_sids,
            "ranker_rounds": training["rounds"], "ranker_cv_ndcg@10": training["cv_ndcg@10"],
            "ranker_oof_ndcg@10": training["oof_ndcg@10"], "ranker_oof_recall@10": training["oof_recall@10"],
            "ranker_seconds": round(training["seconds"], 1),
            "p50_ms": round(float(np.percentile(timings, 50)), 1), "p95_ms": round(float(np.percentile(timings, 95)), 1)}


def quality(retriever, prepared: PreparedDataset, queries) -> dict:
    texts = queries["text"].astype(str).tolist()
    metrics = test_metrics(prepared, queries, retriever.search(texts, EVAL_K))
    free = UnconstrainedConstraint(retriever.trie.vocab, retriever.trie.max_length)
    invalid = [invalid_rate(retriever.decode(texts[start:start + retriever.batch_size], retriever.beam_size, free),
                            retriever.trie) for start in range(0, len(texts), retriever.batch_size)]
    figures = {key: metrics[key] for key in REPORTED if key in metrics}
    figures["unconstrained_invalid_rate"] = float(np.mean(invalid))
    return figures


class Timed:
    """Wraps a constraint and accumulates the seconds spent in it (mask building + state update)."""

    def __init__(self, constraint):
        self.constraint, self.seconds = constraint, 0.0

    def _timed(self, method, *args):
        started = time.perf_counter()
        out = getattr(self.constraint, method)(*args)
        self.seconds += time.perf_counter() - started
        return out

    def start(self, *args):
        return self._timed("start", *args)

    def allowed(self, *args):
        return self._timed("allowed", *args)

    def advance(self, *args):
        return self._timed("advance", *args)


def timed_decode(retriever, texts: list[str], batch: int, constraint) -> tuple[list[float], list]:
    """Seconds per batch and the (tokens, scores) of each batch."""
    seconds, outputs = [], []
    for start in range(0, len(texts), batch):
        started = time.perf_counter()
        result = retriever.decode(texts[start:start + batch], SPEED_BEAMS, constraint)
        if result.tokens.is_cuda:
            torch.cuda.synchronize(result.tokens.device)
        seconds.append(time.perf_counter() - started)
        outputs.append((result.tokens, result.scores))
    return seconds, outputs


def speed(retriever, texts: list[str], n_batches: int, n_single: int) -> None:
    constraints = {"decode_tensor": Timed(TrieConstraint(retriever.trie)),
                   "decode_reference": Timed(DictTrieConstraint(retriever.trie.sids, retriever.trie.vocab))}
    batched_texts = texts[:n_batches * SPEED_BATCH]
    single_texts = texts[:n_single]
    retriever.decode(texts[:SPEED_BATCH], SPEED_BEAMS, constraints["decode_tensor"])     # warm-up
    outputs, figures = {}, {}
    for system, constraint in constraints.items():
        constraint.seconds = 0.0
        batch_seconds, batch_out = timed_decode(retriever, batched_texts, SPEED_BATCH, constraint)
        constraint_ms = 1000 * constraint.seconds / len(batch_seconds)
        single_seconds, single_out = timed_decode(retriever, single_texts, 1, constraint)
        outputs[system] = batch_out + single_out
        figures[system] = {"qps": len(batched_texts) / sum(batch_seconds),
                           "p50_ms": 1000 * float(np.percentile(single_seconds, 50)),
                           "p95_ms": 1000 * float(np.percentile(single_seconds, 95)),
                           "constraint_ms_per_batch": constraint_ms, "n_queries": len(batched_texts)}
        log(f"[{BENCH}] {system}: {figures[system]}")
    identical = all(torch.equal(a_tokens, b_tokens) and torch.equal(a_scores, b_scores)
                    for (a_tokens, a_scores), (b_tokens, b_scores)
                    in zip(outputs["decode_tensor"], outputs["decode_reference"]))
    speedup = figures["decode_tensor"]["qps"] / figures["decode_reference"]["qps"]
    for system, values in figures.items():
        emit(BENCH, system, batch=SPEED_BATCH, beams=SPEED_BEAMS, identical=identical,
             speedup=round(speedup, 2), **{key: round(value, 3) if isinstance(value, float) else value
                                           for key, value in values.items()})


def own_arguments(parser) -> None:
    parser.add_argument("--speed-only", action="store_true", help="time the decoders, skip the quality runs")
    parser.add_argument("--no-speed", action="store_true", help="skip the decoder timing")
    parser.add_argument("--unranked-only", action="store_true",
                        help="only the rows decoded without a ranker (no ranker stage built): with --bucket-pool 1, "
                             "beam order alone")
    add_bucket_pool_argument(parser)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], own_arguments)
    params = benchmark_params(args, QUICK if args.quick else None)
    torch.set_num_threads(int(params["generative"]["threads"]))
    log(f"[{BENCH}] data={args.data} quick={args.quick}")
    retrievers = {}
    results: dict[str, list[dict]] = defaultdict(list)
    for seed in args.seeds:
        seeded = {**params, "seed": seed}
        folders = run_chain(seeded, args.quick, ("sft_checkpoint",) if args.unranked_only else ("sft_checkpoint", "ranker"),
                            BENCH)
        prepared = PreparedDataset.load(folders["prepared_dataset"])
        queries = test_queries(prepared)
        validation = json.loads((folders["sft_checkpoint"] / VALIDATION_FILE).read_text())
        if not (args.speed_only or args.unranked_only):
            results["bm25"].append(quality_of(load_bm25(folders["prepared_dataset"], params["bm25"]), prepared, queries))
            emit(BENCH, "bm25", seed=seed, **results["bm25"][-1])
            for system, ranker_system in RANKED.items():
                started = time.perf_counter()
                results[system].append(ranked_quality(seeded, folders, ranker_system, prepared, queries))
                emit(BENCH, system, seed=seed, **results[system][-1])
                log(f"[{BENCH}] {system} seed {seed}: evaluated in {time.perf_counter() - started:.0f} s")
        for system in UNRANKED:
            row = system_rows(params)[system]
            model = row["subfolder"] or row["variant"]          # validation.json's name of the model
            if model not in validation:       # not among sft.baselines
                continue
            retriever = load_retriever(generative_checkpoint(row, folders), folders["semantic_ids"],
                                       folders["prepared_dataset"], variant=row["variant"],
                                       bucket_pool=bucket_pool(args, params))
            if seed == args.seeds[0]:
                retrievers[system] = (retriever, queries["text"].astype(str).tolist())
            if args.speed_only:
                continue
            started = time.perf_counter()
            figures = quality(retriever, prepared, queries)
            results[system].append(figures)
            log(f"[{BENCH}] {system} seed {seed}: evaluated in {time.perf_counter() - started:.0f} s")
            emit(BENCH, system, seed=seed, bucket_pool=retriever.bucket_pool,
                 seconds=round(validation[model]["train_seconds"], 1),
                 sft_steps=validation[model]["steps"], **figures)
    emit_summary(BENCH, results, (*REPORTED[:-1], "pool_coverage", "pool_coverage_20_sids", "p50_ms"))
    if args.no_speed:
        return
    retriever, texts = retrievers["gr_sarq_acrq_no_ranker"]
    speed(retriever, texts, n_batches=2 if args.quick else 8, n_single=32 if args.quick else 128)


if __name__ == "__main__":
    sys.exit(main())
