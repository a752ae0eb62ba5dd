"""Stage `ranker`: the learned rankers of the decoded pool and of the hybrid union.

For every system of params `ranker.systems` (`pool`: the items of the top decoded SIDs;
`hybrid`: that pool ∪ BM25's top-N ∪ the dense towers' top-N) a LightGBM lambdarank model
is trained on the validation split (`ranker.py`: cross-validated by query inside it; test is
never read) over the features of `features.py`, from the SARQ+ACRQ SFT model.

Artifact: one folder per system (`pool/`, `hybrid/`) with model.txt and ranker.json
(candidate settings, feature names, the cross-validation summary); `ranker.json` at the top
with each system's pool coverage on validation (share of relevant validation items among
its candidates).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from ..data.schema import PreparedDataset
from ..generative.retriever import assets_folder, load_retriever
from ..lexical.bm25 import BM25Retriever
from ..sci.towers import load_towers
from ..text.encoder import TextEncoder
from ..text.stage import load_embeddings
from .features import CandidateFeaturizer, CandidateSettings, QueryHistory
from ..shared.metrics import evaluate
from .ranker import (RankedSearcher, RankerConfig, labels, load_ranker, out_of_fold_rankings, save_ranker,
                     train_ranker)

SUMMARY_FILE = "ranker.json"
ESTIMATE_K = 10


def candidate_settings(system_params: dict) -> CandidateSettings:
    return CandidateSettings(channels=tuple(system_params["channels"]), pool_sids=int(system_params["pool_sids"]),
                             bm25_depth=int(system_params["bm25_depth"]), dense_depth=int(system_params["dense_depth"]),
                             history_depth=int(system_params["history_depth"]))


def load_featurizer(params: dict, inputs: Mapping[str, Path], checkpoint: Path | None = None,
                    variant: str | None = None) -> CandidateFeaturizer:
    """The featurizer over a generative checkpoint (default: the SFT one) and the pipeline's artifacts."""
    return featurizer_from_folders(checkpoint if checkpoint is not None else inputs["sft_checkpoint"],
                                   inputs["semantic_ids"], inputs["prepared_dataset"],
                                   inputs["text_embeddings"], params["bm25"], params["text"], variant)


def featurizer_from_folders(checkpoint_folder: str | Path, sids_folder: str | Path, prepared_folder: str | Path,
                            embeddings_folder: str | Path, bm25_params: dict,
                            text_params: dict, variant: str | None = None) -> CandidateFeaturizer:
    prepared = PreparedDataset.load(prepared_folder)
    retriever = load_retriever(checkpoint_folder, sids_folder, prepared_folder, variant=variant)
    towers = load_towers(assets_folder(checkpoint_folder))
    encoder = TextEncoder(text_params["model_name"], None, text_params["batch_size"], text_params["max_seq_length"],
                          progress=False)
    minilm_items, minilm_queries = load_embeddings(embeddings_folder)
    exposure = prepared.items["item_id"].map(dict(zip(prepared.segments["item_id"], prepared.segments["exposure"])))
    bm25 = BM25Retriever.from_params(prepared.item_text().tolist(), bm25_params)
    return CandidateFeaturizer(retriever, bm25, encoder.encode,
                               lambda texts, minilm: towers.encode_query_texts(texts, lambda _: minilm), minilm_items,
                               prepared.items["title"].tolist(), exposure.fillna(0).to_numpy(),
                               training_history(prepared, minilm_queries, bm25_params))


def training_history(prepared: PreparedDataset, minilm_queries: np.ndarray, bm25_params: dict) -> QueryHistory:
    """The training queries judged relevant to each item (training split only: validation and
    test queries never reach a feature)."""
    pairs = prepared.relevant("train")[["query_id", "item_id"]]
    query_position = {query: position for position, query in enumerate(prepared.queries["query_id"])}
    item_row = {item: row for row, item in enumerate(prepared.items["item_id"])}
    positions = np.array([query_position[query] for query in pairs["query_id"]], dtype=np.int64)
    texts = prepared.queries["text"].astype(str).to_numpy()
    return QueryHistory(np.array([item_row[item] for item in pairs["item_id"]], dtype=np.int64), texts[positions],
                        minilm_queries[positions], len(prepared.items), bm25_params)


def coverage(candidate_rows: list[np.ndarray], query_ids, item_ids: np.ndarray, relevant) -> float:
    """Share of the relevant (query, item) pairs whose item is among the query's candidates."""
    wanted = relevant.groupby("query_id")["item_id"].apply(set).to_dict()
    found = total = 0
    for query, rows in zip(query_ids, candidate_rows):
        items = set(item_ids[rows].tolist())
        found += len(wanted.get(query, set()) & items)
        total += len(wanted.get(query, set()))
    return found / total if total else 0.0


def validation_estimate(candidates, out_of_fold, query_ids, item_ids: np.ndarray, prepared: PreparedDataset) -> dict:
    """`oof_<metric>`: the shared metrics of the out-of-fold rankings on the validation split
    (queries whose candidates miss every relevant item score 0): the figure to choose
    candidate settings and ranker params by, since it is comparable across them."""
    rankings = out_of_fold_rankings(candidates, out_of_fold, query_ids, item_ids, ESTIMATE_K)
    metrics = evaluate(rankings, prepared.split_judgments("valid"), prepared.scale)
    return {f"oof_{key}": metrics[key] for key in ("recall@10", "ndcg@10", "mrr")}


def fit_ranker(featurizer: CandidateFeaturizer, prepared: PreparedDataset, system_params: dict, config: RankerConfig,
               seed: int):
    """Train one ranker (`system_params`: a row of params ranker.systems) on the validation
    queries with a relevant item, over `featurizer`'s candidates; returns (booster, candidate
    settings, training summary)."""
    started = time.perf_counter()
    relevant = prepared.relevant("valid")
    queries = prepared.split_queries("valid")
    queries = queries[queries["query_id"].isin(set(relevant["query_id"]))]
    if queries.empty:
        raise ValueError(f"dataset {prepared.name!r} has no validation query with a relevant item to train the ranker on")
    item_ids = featurizer.retriever.item_ids
    query_ids, texts = queries["query_id"].tolist(), queries["text"].astype(str).tolist()
    candidate = candidate_settings(system_params)
    candidates = featurizer.candidates(texts, candidate)
    query_labels = labels(candidates, query_ids, item_ids, prepared.split_judgments("valid"), prepared.scale,
                          config.label_steps)
    booster, training, out_of_fold = train_ranker(candidates, query_labels, config, seed)
    training["valid_coverage"] = coverage([found.rows for found in candidates], query_ids, item_ids, relevant)
    training.update(validation_estimate(candidates, out_of_fold, query_ids, item_ids, prepared))
    training["mean_candidates"] = float(np.mean([len(found.rows) for found in candidates]))
    training["seconds"] = time.perf_counter() - started
    return booster, candidate, training


def run(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    settings = params["ranker"]
    config = RankerConfig.from_params(settings)
    prepared = PreparedDataset.load(inputs["prepared_dataset"])
    featurizer = load_featurizer(params, inputs)
    summary: dict[str, dict] = {}
    for system, system_params in settings["systems"].items():
        booster, candidate, training = fit_ranker(featurizer, prepared, system_params, config, int(params["seed"]))
        save_ranker(out / system, booster, candidate, training)
        summary[system] = training
        print(f"ranker {system}: {json.dumps({k: v for k, v in training.items() if k != 'feature_gain'})}",
              file=sys.stderr, flush=True)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return {f"{system}.{key}": value for system, training in summary.items()
            for key, value in training.items() if isinstance(value, (int, float))}


def load_ranked_searcher(params: dict, inputs: Mapping[str, Path], system: str,
                         checkpoint: Path | None = None, variant: str | None = None) -> RankedSearcher:
    """The searcher of ranker `system` (a subfolder of the ranker artifact) over a generative checkpoint."""
    booster, candidate = load_ranker(Path(inputs["ranker"]) / system)
    return RankedSearcher(load_featurizer(params, inputs, checkpoint, variant), booster, candidate)


def load_served_ranker(checkpoint_folder: str | Path, sids_folder: str | Path, prepared_folder: str | Path,
                       embeddings_folder: str | Path, ranker_folder: str | Path,
                       bm25_params: dict, text_params: dict, variant: str | None = None) -> RankedSearcher:
    """The pyfunc loader of a ranked generative retriever: `ranker_folder` holds one ranker
    (model.txt + ranker.json), the other folders are those `load_retriever` takes plus the
    MiniLM item vectors (text_embeddings)."""
    booster, candidate = load_ranker(ranker_folder)
    featurizer = featurizer_from_folders(checkpoint_folder, sids_folder, prepared_folder,
                                         embeddings_folder, bm25_params, text_params, variant)
    return RankedSearcher(featurizer, booster, candidate)
