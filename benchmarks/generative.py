"""Generative retrieval benchmark: TIGER vs SARQ+ACRQ SIDs, tensor trie vs reference decoder.

Quality (`gr_tiger`, `gr_sarq_acrq`): the pipeline's own stages up to sft_checkpoint (which
trains both models with the same size and step budget on the same split), then the test
queries with a relevant item through `load_retriever(...).search(texts, 10)` and the
shared `evaluate`: recall@10, ndcg@10, recall@10_cold, recall@10_seen, plus the
unconstrained-decoding invalid-SID rate on those queries and the SFT seconds.

Speed (`decode_tensor`, `decode_reference`): the SARQ+ACRQ model's weights under the
tensorised trie (`TrieConstraint`) and under the reference (`DictTrieConstraint`: a Python
`prefix_allowed_tokens`-style function per hypothesis over a dict trie), both inside the
same beam loop: qps at batch 64 / beam 20, p50/p95 ms at batch 1, and `identical` (true
when both returned the same ranked SIDs with equal scores for every timed query, so the
same top-K items).

Stage folders are cached under artifacts/bench/chain/<quick|full>/<stage>-<key> (shared with
the alignment benchmark), the key hashing the params a stage reads and its inputs' keys.

  .venv/bin/python benchmarks/generative.py [--data PATH|demo] [--quick] [--speed-only] [--bucket-pool N]
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from common import (add_bucket_pool_argument, benchmark_params, bucket_pool, emit, log, parse_args,  # sets sys.path
                    run_chain, test_metrics, test_queries)

from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.generative.retriever import load_retriever  # noqa: E402
from sid_models.generative.stage import VALIDATION_FILE  # noqa: E402
from sid_models.generative.trie import DictTrieConstraint, TrieConstraint, UnconstrainedConstraint, invalid_rate  # noqa: E402

BENCH = "generative"
EVAL_K = 10
SPEED_BATCH, SPEED_BEAMS = 64, 20
QUICK = {
    "demo": {"n_items": 800, "n_queries": 900},
    "sci": {"train": {"epochs": 3}},
    "generative": {"preset": "cpu", "presets": {"cpu": {"sft": {"steps": 150, "batch_size": 64}}}},
    "sft": {"warmup_steps": 15, "valid_max_queries": 100},
}
SYSTEMS = {"gr_tiger": "tiger", "gr_sarq_acrq": "sarq_acrq"}


def quality(retriever, prepared: PreparedDataset, queries) -> dict:
    texts = queries["text"].astype(str).tolist()
    metrics = test_metrics(prepared, queries, retriever.search(texts, EVAL_K))
    free = UnconstrainedConstraint(retriever.trie.vocab, retriever.trie.max_length)
    invalid = [invalid_rate(retriever.decode(texts[start:start + retriever.batch_size], retriever.beam_size, free),
                            retriever.trie) for start in range(0, len(texts), retriever.batch_size)]
    figures = {key: metrics[key] for key in ("recall@10", "ndcg@10", "recall@10_cold", "recall@10_seen",
                                             "mrr", "n_queries") if key in metrics}
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
    add_bucket_pool_argument(parser)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], own_arguments)
    params = benchmark_params(args, QUICK if args.quick else None)
    torch.set_num_threads(int(params["generative"]["threads"]))
    log(f"[{BENCH}] data={args.data} quick={args.quick}")
    retrievers = {}
    for seed in args.seeds:
        seeded = {**params, "seed": seed}
        folders = run_chain(seeded, args.quick, ("sft_checkpoint",), BENCH)
        prepared = PreparedDataset.load(folders["prepared_dataset"])
        queries = test_queries(prepared)
        validation = json.loads((folders["sft_checkpoint"] / VALIDATION_FILE).read_text())
        for system, variant in SYSTEMS.items():
            retriever = load_retriever(folders["sft_checkpoint"], folders["semantic_ids"],
                                       folders["prepared_dataset"], folders["sci_index"], variant=variant,
                                       bucket_pool=bucket_pool(args, params))
            if seed == args.seeds[0]:
                retrievers[system] = (retriever, queries["text"].astype(str).tolist())
            if args.speed_only:
                continue
            started = time.perf_counter()
            figures = quality(retriever, prepared, queries)
            log(f"[{BENCH}] {system} seed {seed}: evaluated in {time.perf_counter() - started:.0f} s")
            emit(BENCH, system, seed=seed, bucket_pool=retriever.bucket_pool,
                 seconds=round(validation[variant]["train_seconds"], 1),
                 sft_steps=validation[variant]["steps"], **figures)
    retriever, texts = retrievers["gr_sarq_acrq"]
    speed(retriever, texts, n_batches=2 if args.quick else 8, n_single=32 if args.quick else 128)


if __name__ == "__main__":
    sys.exit(main())
