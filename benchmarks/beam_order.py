"""Beam-order headroom on the validation split: how good can SIDs taken one at a time get?

The issue's beam-order figure (`bucket_pool: 1`) takes the decoded SIDs strictly in order and
each SID's bucket SCI-ordered. This script holds the bucket resolution fixed (the retriever's
own `resolve`, bucket_pool 1) and changes only who orders the SIDs, per seed's SFT model:
- `model`: the SFT model's beam of `--beam` SIDs, in beam order (the shipped figure);
- `model_lp<a>`: the same model decoded with length penalty a (`--length-penalties`) instead of
  params decode.length_penalty, in beam order (the ranking key the beam and its order use);
- `fused_<λ>`: that beam re-ordered by beam score + λ · the SCI score of the SID's best item;
- `dense_best_item`: every SID ordered by the SCI score of its best item (no generator);
- `dense_centroid`: every SID ordered by f_q(query) · the mean SCI vector of its bucket;
- `oracle_first_sid`: the first SID the one whose bucket puts the most relevant items into its
  SCI-ordered top 10, then the model's beam (the ceiling of getting the first SID right).
Each row: recall@10, ndcg@10, `top20_sid_coverage` (share of the relevant validation pairs in
the items of the first 20 SIDs), `first_sid_hit` (share of queries whose first SID's bucket
holds a relevant item), and the mean item counts behind them, `top20_sid_items` and
`first_sid_items` (coarser SIDs cover more by holding more items: compare SID settings at
their item counts). Test is never read.

    .venv/bin/python benchmarks/beam_order.py [--data PATH|demo] [--quick] [--seeds 0] [--beam 100]
        [--lambdas 1 5 20] [--length-penalties 0 1]
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from common import benchmark_params, emit, emit_summary, log, parse_args, run_chain  # sets sys.path
from generative import QUICK  # the generative benchmark's quick run: the same cached chain

from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.generative.retriever import load_retriever  # noqa: E402
from sid_models.generative.stage import validation_queries  # noqa: E402
from sid_models.ranking.stage import coverage  # noqa: E402
from sid_models.shared.metrics import evaluate  # noqa: E402

BENCH = "beam_order"
EVAL_K = 10
TOP_SIDS = 20
DENSE_SIDS = 50             # SIDs a dense ordering hands to `resolve`: enough for 10 items and 20 SIDs
REPORTED = ("recall@10", "ndcg@10", "top20_sid_coverage", "first_sid_hit", "top20_sid_items", "first_sid_items")


def own_arguments(parser) -> None:
    parser.add_argument("--beam", type=int, default=100, help="beam width the model and fused rows decode with")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 5.0, 20.0],
                        help="weights of the best item's SCI score in the fused rows")
    parser.add_argument("--length-penalties", type=float, nargs="*", default=[],
                        help="length penalties the model_lp rows decode with (the shipped one is the model row)")


def oracle_first(retriever, sid_of_row: np.ndarray, item_scores: np.ndarray, relevant_rows: set[int]) -> int:
    """The SID whose SCI-ordered top EVAL_K items hold the most relevant items (-1: no bucket holds one)."""
    best, best_found = -1, 0
    for sid in {int(sid_of_row[row]) for row in relevant_rows}:
        rows = retriever.buckets.items(sid)
        top = rows[np.argsort(-item_scores[rows], kind="stable")[:EVAL_K]]
        found = len(relevant_rows.intersection(top.tolist()))
        if found > best_found:
            best, best_found = sid, found
    return best


def score_orderings(retriever, texts, query_ids, orderings: dict[str, list[np.ndarray]], prepared: PreparedDataset,
                    query_vectors: np.ndarray) -> dict[str, dict]:
    """The REPORTED figures of each ordering (per query, SID indices best first)."""
    judged = prepared.split_judgments("valid")
    judged = judged[judged["query_id"].isin(set(query_ids))]
    relevant = prepared.relevant("valid")
    wanted = relevant.groupby("query_id")["item_id"].apply(lambda items: set(map(str, items))).to_dict()
    item_ids = np.asarray(retriever.item_ids).astype(str)
    out = {}
    for name, ordered in orderings.items():
        width = max(len(sids) for sids in ordered)
        sids = np.full((len(ordered), width), -1, dtype=np.int64)
        for row, order in enumerate(ordered):
            sids[row, :len(order)] = order
        # resolve reads the SIDs in the order given (bucket_pool 1); scores only have to descend
        keys = np.where(sids >= 0, -np.arange(width, dtype=np.float32)[None, :], -np.inf)
        found = retriever.resolve(texts, sids, keys, EVAL_K, query_vectors, bucket_pool=1)
        metrics = evaluate({query: [item for item, _ in hits] for query, hits in zip(query_ids, found)}, judged,
                           prepared.scale)
        first = [retriever.buckets.items(int(order[0])) if len(order) else np.zeros(0, dtype=np.int64)
                 for order in ordered]
        pools = [retriever.buckets.items_of(order[:TOP_SIDS]) for order in ordered]
        out[name] = {"recall@10": metrics["recall@10"], "ndcg@10": metrics["ndcg@10"],
                     "top20_sid_coverage": coverage(pools, query_ids, item_ids, relevant),
                     "top20_sid_items": float(np.mean([len(rows) for rows in pools])),
                     "first_sid_items": float(np.mean([len(rows) for rows in first])),
                     "first_sid_hit": float(np.mean([bool(wanted.get(query, set()) & set(item_ids[rows].tolist()))
                                                     for query, rows in zip(query_ids, first)]))}
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], own_arguments)
    params = benchmark_params(args, QUICK if args.quick else None)
    torch.set_num_threads(int(params["generative"]["threads"]))
    results: dict[str, list[dict]] = defaultdict(list)
    for seed in args.seeds:
        folders = run_chain({**params, "seed": seed}, args.quick, ("sft_checkpoint",), BENCH)
        prepared = PreparedDataset.load(folders["prepared_dataset"])
        retriever = load_retriever(folders["sft_checkpoint"], folders["semantic_ids"], folders["prepared_dataset"])
        buckets = retriever.buckets
        sid_of_row = buckets.sid_of_row()
        queries = validation_queries(prepared, int(params["sft"]["valid_max_queries"]))
        texts, query_ids = queries["text"].astype(str).tolist(), queries["query_id"].tolist()
        query_vectors = retriever.encode_queries(texts)
        beam_sids, beam_scores = retriever.search_sids(texts, args.beam, query_vectors)
        log(f"[{BENCH}] seed {seed}: decoded {len(texts)} validation queries, beam {args.beam}")
        shipped_penalty = retriever.length_penalty
        by_penalty = {}
        try:
            for penalty in args.length_penalties:
                retriever.length_penalty = penalty
                by_penalty[penalty] = retriever.search_sids(texts, args.beam, query_vectors)[0]
        finally:        # leave the retriever decoding as params say, whatever a penalty raised
            retriever.length_penalty = shipped_penalty
        sizes = buckets.sizes()
        centroids = np.add.reduceat(retriever.item_vectors[buckets.rows], buckets.ptr[:-1], axis=0) / sizes[:, None]
        row_of = dict(zip(np.asarray(retriever.item_ids).astype(str), range(len(retriever.item_ids))))
        relevant_rows = prepared.relevant("valid").groupby("query_id")["item_id"].apply(
            lambda items: {row_of[str(item)] for item in items}).to_dict()
        orderings: dict[str, list[np.ndarray]] = defaultdict(list)
        for position, query in enumerate(query_ids):
            item_scores = retriever.item_vectors @ query_vectors[position]
            best_item = np.maximum.reduceat(item_scores[buckets.rows], buckets.ptr[:-1])
            decoded = beam_sids[position][beam_sids[position] >= 0]
            scores = beam_scores[position][beam_sids[position] >= 0]
            orderings["model"].append(decoded)
            for penalty, sids in by_penalty.items():
                orderings[f"model_lp{penalty:g}"].append(sids[position][sids[position] >= 0])
            for weight in args.lambdas:
                fused = scores + weight * best_item[decoded]
                orderings[f"fused_{weight:g}"].append(decoded[np.argsort(-fused, kind="stable")])
            orderings["dense_best_item"].append(np.argsort(-best_item, kind="stable")[:DENSE_SIDS])
            orderings["dense_centroid"].append(np.argsort(-(centroids @ query_vectors[position]), kind="stable")[:DENSE_SIDS])
            first = oracle_first(retriever, sid_of_row, item_scores, relevant_rows.get(query, set()))
            orderings["oracle_first_sid"].append(decoded if first < 0 else
                                                 np.concatenate([[first], decoded[decoded != first]]))
        for name, figures in score_orderings(retriever, texts, query_ids, orderings, prepared, query_vectors).items():
            results[name].append(figures)
            emit(BENCH, name, seed=seed, beam=args.beam, n_queries=len(texts),
                 **{key: round(value, 4) for key, value in figures.items()})
    if len(args.seeds) > 1:
        emit_summary(BENCH, results, REPORTED)


if __name__ == "__main__":
    main()
