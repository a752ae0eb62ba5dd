"""Stage `sft_checkpoint`: SFT of the generative retriever on the shipped SID variant
(`semantic_ids.shipped`, SARQ+ACRQ) and, for the evaluation report, the models of
`sft.baselines` (each a SID variant and a recipe of params overrides; TIGER SIDs by default).

Inputs: prepared_dataset, sci_towers (query tower + item views for bucket ranking),
sci_index, semantic_ids. Writes:

  model.pt, config.json, vocab.json, train_state.pt, metrics.jsonl, sft_data.json   the shipped variant's model
  sci/                 query tower, item views, decode/text settings (`retriever.py`)
  <name>/              each baseline model of sft.baselines, same layout (`tiger/`)
  validation.json      per model (the shipped one, under its variant's name, first): recall@10, ndcg@10,
                       recall@10_<segment>, beam_order_recall@10 and _ndcg@10 (bucket_pool 1), valid_sid_rate
                       (constrained beam, must be 1), unconstrained_invalid_rate, train_seconds, and the
                       model's sft_data.json (n_retrieval_pairs, n_lent_pairs, n_indexing_per_epoch)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data.schema import PreparedDataset
from ..quantize.table import sid_variants
from ..shared.metrics import evaluate
from ..shared.training import DistContext
from ..params import deep_merge
from .retriever import GenerativeRetriever, load_retriever, write_retriever_assets
from .train import DATA_FILE, train_sft
from .trie import UnconstrainedConstraint, invalid_rate

VALIDATION_FILE = "validation.json"
EVAL_K = 10
REPORTED = ("recall@10", "ndcg@10", "mrr", "recall@10_seen", "recall@10_cold", "recall@10_multi")

FINAL_LOSS_STEPS = 20        # the reported final loss averages the last this many logged steps


def validation_queries(prepared: PreparedDataset, max_queries: int):
    """Validation queries with at least one relevant item, the first `max_queries` of them."""
    relevant = set(prepared.relevant("valid")["query_id"])
    queries = prepared.split_queries("valid")
    queries = queries[queries["query_id"].isin(relevant)].head(max_queries)
    if queries.empty:
        raise ValueError("no validation query has a relevant item: cannot validate the SFT model")
    return queries


def sid_validity(retriever: GenerativeRetriever, texts: list[str]) -> dict[str, float]:
    """valid_sid_rate of constrained beams (1 - invalid) and the invalid rate of free decoding."""
    beams = retriever.beam_size
    free = UnconstrainedConstraint(retriever.trie.vocab, retriever.trie.max_length)
    constrained_invalid, free_invalid = [], []
    for start in range(0, len(texts), retriever.batch_size):
        chunk = texts[start:start + retriever.batch_size]
        constrained_invalid.append(invalid_rate(retriever.decode(chunk, beams), retriever.trie) * len(chunk))
        free_invalid.append(invalid_rate(retriever.decode(chunk, beams, free), retriever.trie) * len(chunk))
    return {"valid_sid_rate": 1.0 - sum(constrained_invalid) / len(texts),
            "unconstrained_invalid_rate": sum(free_invalid) / len(texts)}


def validate(retriever: GenerativeRetriever, prepared: PreparedDataset, max_queries: int) -> dict[str, float]:
    """REPORTED under the checkpoint's decoding, and `beam_order_recall@10` / `beam_order_ndcg@10`
    from the same beams with the SIDs taken strictly in beam order (bucket_pool 1)."""
    queries = validation_queries(prepared, max_queries)
    texts = queries["text"].astype(str).tolist()
    judged = prepared.split_judgments("valid")
    judged = judged[judged["query_id"].isin(set(queries["query_id"]))]
    segments = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    query_vectors = retriever.encode_queries(texts)
    sids, scores = retriever.search_sids(texts, EVAL_K, query_vectors)

    def metrics_at(bucket_pool: int) -> dict[str, float]:
        found = retriever.resolve(texts, sids, scores, EVAL_K, query_vectors, bucket_pool)
        rankings = {query: [item for item, _ in hits] for query, hits in zip(queries["query_id"], found)}
        return evaluate(rankings, judged, prepared.scale, segments)

    metrics, beam_order = metrics_at(retriever.bucket_pool), metrics_at(1)
    figures = {key: metrics[key] for key in REPORTED if key in metrics}
    figures["beam_order_recall@10"], figures["beam_order_ndcg@10"] = beam_order["recall@10"], beam_order["ndcg@10"]
    figures["n_valid_queries"] = len(texts)
    return {**figures, **sid_validity(retriever, texts)}


def run(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    torch.set_num_threads(int(params["generative"]["threads"]))
    dist = DistContext.from_env(params["generative"]["device"])
    prepared = PreparedDataset.load(inputs["prepared_dataset"])
    if dist.is_main:
        write_retriever_assets(out, inputs["sci_towers"], params)
    models = sft_models(params, inputs["semantic_ids"], out)
    trained: dict[str, tuple[float, list[dict]]] = {}
    for name, (variant, folder, model_params) in models.items():
        started = time.perf_counter()
        _, history = train_sft(model_params, prepared, inputs["semantic_ids"], folder, variant, dist=dist,
                               towers_folder=inputs["sci_towers"])
        trained[name] = (time.perf_counter() - started, history)
    if not dist.is_main:
        return {}       # under torchrun the other ranks only train; rank 0 validates and reports
    summary: dict[str, dict[str, float]] = {}
    for name, (seconds, history) in trained.items():
        variant, folder, _ = models[name]
        retriever = load_retriever(folder, inputs["semantic_ids"], inputs["prepared_dataset"],
                                   variant=variant, device=dist.device)
        summary[name] = {**validate(retriever, prepared, int(params["sft"]["valid_max_queries"])),
                         **json.loads((folder / DATA_FILE).read_text()), "train_seconds": seconds, "steps": len(history)}
        if history:
            tail = history[-FINAL_LOSS_STEPS:]
            summary[name]["final_loss"] = sum(record["loss"] for record in tail) / len(tail)
    (out / VALIDATION_FILE).write_text(json.dumps(summary, indent=2))
    return {f"{name}_{key}": value for name, figures in summary.items() for key, value in figures.items()}


def sft_models(params: dict, sids_folder: Path, out: Path) -> dict[str, tuple[str, Path, dict]]:
    """name -> (SID variant, folder, params) of every model the stage trains: the shipped
    variant's in `out` itself (named after the variant), then each row of sft.baselines in
    `out/<name>/` with its overrides merged over params (a row set to null is skipped)."""
    shipped, *known = sid_variants(sids_folder)
    models = {shipped: (shipped, out, params)}
    for name, row in params["sft"]["baselines"].items():
        if row is None:                  # a row set to null is switched off
            continue
        if set(row) != {"variant", "overrides"}:
            raise ValueError(f"sft.baselines.{name}: a row has keys ['overrides', 'variant'], got {sorted(row)}")
        if row["variant"] not in [shipped, *known]:
            raise ValueError(f"sft.baselines.{name}: variant {row['variant']!r} is not a SID variant of "
                             f"{sids_folder} (it holds {[shipped, *known]})")
        if name in models or name == "sci":
            raise ValueError(f"sft.baselines.{name}: the name is taken (the shipped model or the sci/ assets)")
        models[name] = (row["variant"], out / name, deep_merge(params, row["overrides"]))
    return models


def read_validation(folder: str | Path, stage: str = "sft_checkpoint") -> dict[str, dict[str, float]]:
    """The validation.json a checkpoint stage (this one, or dpo_checkpoint) wrote."""
    path = Path(folder) / VALIDATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{stage} {folder} lacks {VALIDATION_FILE}")
    return json.loads(path.read_text())


def check_valid_sids(validation: dict[str, dict[str, float]]) -> tuple[bool, str, dict[str, float]]:
    """Every variant's constrained beams on the validation queries are 100 % valid SIDs."""
    rates = {f"{variant}_valid_sid_rate": figures["valid_sid_rate"] for variant, figures in validation.items()}
    rates.update({f"{variant}_unconstrained_invalid_rate": figures["unconstrained_invalid_rate"]
                  for variant, figures in validation.items()})
    bad = {variant: figures["valid_sid_rate"] for variant, figures in validation.items()
           if figures["valid_sid_rate"] != 1.0}
    return not bad, (f"invalid SIDs decoded: {bad}" if bad else "all decoded SIDs valid"), rates


def check_recall_floor(validation: dict[str, dict[str, float]], floor: float) -> tuple[bool, str, dict[str, float]]:
    """The shipped variant's model (validation.json's first entry) has validation Recall@10 above `floor`."""
    recall = next(iter(validation.values()))["recall@10"]
    figures = {f"{variant}_recall@10": values["recall@10"] for variant, values in validation.items()}
    figures["floor"] = floor
    return recall > floor, f"validation Recall@10 {recall:.4f} vs floor {floor:.4f}", figures
