"""LightGBM lambdarank over candidate features, trained on the validation split.

Labels: a judged item's NDCG gain on the dataset's scale (`RelevanceScale.gain`), quantised
to `label_steps` levels per unit so LightGBM's integer labels carry the same gains
(`label_gain[l] = l / label_steps`); unjudged candidates get label 0, as the metrics count them.

Model selection never sees test: the validation queries are cut into `folds` folds by query;
for each fold a model trained on the others stops early on the held-out fold's NDCG@10, and
the mean best iteration is the number of rounds of the final model, trained on every
validation query. The held-out NDCG@10 of the folds is reported (`cv_ndcg@10`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.schema import RelevanceScale
from .features import FEATURES, CandidateFeaturizer, CandidateSettings, QueryCandidates

MODEL_FILE = "model.txt"
MAX_QUERY_ROWS = 10_000        # LightGBM lambdarank's limit on the rows of one query
SCI_SCORE = FEATURES.index("sci_score")
SETTINGS_FILE = "ranker.json"


@dataclass(frozen=True)
class RankerConfig:
    """LightGBM settings (params `ranker.lightgbm`) and the cross-validation protocol."""

    num_leaves: int
    learning_rate: float
    min_data_in_leaf: int
    feature_fraction: float
    max_rounds: int
    early_stopping_rounds: int
    folds: int
    label_steps: int
    threads: int

    @classmethod
    def from_params(cls, ranker_params: dict) -> "RankerConfig":
        return cls(**ranker_params["lightgbm"])


def labels(candidates: Sequence[QueryCandidates], query_ids: Sequence[str], item_ids: np.ndarray,
           judgments: pd.DataFrame, scale: RelevanceScale, label_steps: int) -> list[np.ndarray]:
    """Integer label of every candidate: round(gain × label_steps), 0 when unjudged."""
    grade = {(query, item): relevance for query, item, relevance
             in judgments[["query_id", "item_id", "relevance"]].itertuples(index=False)}
    out = []
    for query, found in zip(query_ids, candidates):
        relevance = np.array([grade.get((query, item_ids[row]), np.nan) for row in found.rows], dtype=np.float64)
        gains = np.where(np.isnan(relevance), 0.0, scale.gain(np.nan_to_num(relevance)))
        out.append(np.rint(gains * label_steps).astype(np.int32))
    return out


def training_rows(features: np.ndarray, labels: np.ndarray, limit: int = MAX_QUERY_ROWS) -> np.ndarray:
    """The candidate rows of one query a ranker trains on: all of them, or past `limit` (LightGBM's
    lambdarank refuses a larger query) every labelled row and then the highest SCI scores. Scoring
    is not capped: a served query ranks all its candidates."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    labelled = np.flatnonzero(labels > 0)
    if len(labelled) >= limit:
        raise ValueError(f"a query has {len(labelled)} labelled candidates, more than LightGBM's {limit} rows per query")
    rest = np.flatnonzero(labels <= 0)
    by_score = rest[np.argsort(-np.nan_to_num(features[rest, SCI_SCORE], nan=-np.inf), kind="stable")]
    return np.sort(np.concatenate([labelled, by_score[:limit - len(labelled)]]))


def _dataset(candidates: Sequence[QueryCandidates], query_labels: Sequence[np.ndarray], label_gain: list[float]):
    import lightgbm

    kept = [training_rows(found.features, labels) for found, labels in zip(candidates, query_labels)]
    return lightgbm.Dataset(np.concatenate([found.features[rows] for found, rows in zip(candidates, kept)]),
                            label=np.concatenate([labels[rows] for labels, rows in zip(query_labels, kept)]),
                            group=[len(rows) for rows in kept],
                            feature_name=list(FEATURES), params={"label_gain": label_gain}, free_raw_data=False)


def _booster_params(config: RankerConfig, label_gain: list[float], seed: int) -> dict:
    return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "label_gain": label_gain,
            "num_leaves": config.num_leaves, "learning_rate": config.learning_rate,
            "min_data_in_leaf": config.min_data_in_leaf, "feature_fraction": config.feature_fraction,
            "num_threads": config.threads, "seed": seed, "deterministic": True, "force_row_wise": True,
            "verbosity": -1}


def train_ranker(candidates: Sequence[QueryCandidates], query_labels: Sequence[np.ndarray], config: RankerConfig,
                 seed: int):
    """(booster trained on every query, cross-validation summary, out-of-fold scores).

    Folds are drawn over all the queries given (so two candidate settings over the same
    queries share their folds); queries whose candidates hold no positive label carry no
    ranking signal and are left out of training. The out-of-fold scores (one array per query,
    each from the fold model that did not see it) rank every query, so `evaluate` on them
    is the validation estimate of the system, misses of the candidate set included."""
    import lightgbm

    fold_of = np.random.default_rng(seed).permutation(len(candidates)) % config.folds
    has_positive = np.array([len(found) > 0 and found.max() > 0 for found in query_labels])
    if has_positive.sum() < config.folds or any(not has_positive[fold_of == fold].any() for fold in range(config.folds)):
        raise ValueError(f"the ranker needs at least {config.folds} validation queries with a relevant candidate "
                         f"(one per fold), got {int(has_positive.sum())}")
    top_label = max(int(found.max()) for found, positive in zip(query_labels, has_positive) if positive)
    label_gain = [level / config.label_steps for level in range(top_label + 1)]
    booster_params = _booster_params(config, label_gain, seed)

    def subset(indices):
        return [candidates[i] for i in indices], [query_labels[i] for i in indices]

    best_rounds, held_out = [], []
    out_of_fold: list[np.ndarray] = [np.zeros(0)] * len(candidates)
    for fold in range(config.folds):
        train = np.flatnonzero((fold_of != fold) & has_positive)
        valid = np.flatnonzero((fold_of == fold) & has_positive)
        booster = lightgbm.train(booster_params, _dataset(*subset(train), label_gain), num_boost_round=config.max_rounds,
                                 valid_sets=[_dataset(*subset(valid), label_gain)],
                                 callbacks=[lightgbm.early_stopping(config.early_stopping_rounds, verbose=False)])
        best_rounds.append(int(booster.best_iteration))
        held_out.append(float(booster.best_score["valid_0"]["ndcg@10"]))
        for index in np.flatnonzero(fold_of == fold):
            if len(candidates[index].rows):
                out_of_fold[index] = booster.predict(candidates[index].features, num_iteration=booster.best_iteration,
                                                     num_threads=config.threads)
    rounds = max(1, int(round(float(np.mean(best_rounds)))))
    kept = np.flatnonzero(has_positive)
    final = lightgbm.train(booster_params, _dataset(*subset(kept), label_gain), num_boost_round=rounds)
    importance = dict(zip(FEATURES, final.feature_importance("gain").round(1).tolist()))
    summary = {"rounds": rounds, "fold_rounds": best_rounds, "cv_ndcg@10": float(np.mean(held_out)),
               "cv_ndcg@10_std": float(np.std(held_out)), "train_queries": len(kept),
               "train_rows": int(sum(len(candidates[i].rows) for i in kept)), "feature_gain": importance}
    return final, summary, out_of_fold


def out_of_fold_rankings(candidates: Sequence[QueryCandidates], scores: Sequence[np.ndarray], query_ids: Sequence[str],
                         item_ids: np.ndarray, k: int) -> dict[str, list[str]]:
    """query id -> the top-k item ids of its candidates by out-of-fold score."""
    return {query: [str(item_ids[found.rows[i]]) for i in np.argsort(-score, kind="stable")[:k]]
            for query, found, score in zip(query_ids, candidates, scores)}


class RankedSearcher:
    """`search(queries, k)` of a trained ranker over the candidates of `settings`' channels."""

    def __init__(self, featurizer: CandidateFeaturizer, booster, settings: CandidateSettings):
        self.featurizer, self.booster, self.settings = featurizer, booster, settings

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        return self.rank(self.featurizer.candidates(list(queries), self.settings), k)

    def rank(self, candidates: Sequence[QueryCandidates], k: int) -> list[list[tuple[str, float]]]:
        """Top-k (item id, ranker score) of each query's candidates, best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        item_ids = self.featurizer.retriever.item_ids
        results = []
        for found in candidates:
            if not len(found.rows):
                results.append([])
                continue
            scores = self.booster.predict(found.features, num_threads=1)
            order = np.argsort(-scores, kind="stable")[:k]
            results.append([(str(item_ids[found.rows[i]]), float(scores[i])) for i in order])
        return results


def save_ranker(folder: str | Path, booster, settings: CandidateSettings, summary: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / MODEL_FILE))
    (folder / SETTINGS_FILE).write_text(json.dumps({"candidates": asdict(settings), "features": list(FEATURES),
                                                    "training": summary}, indent=2))


def load_ranker(folder: str | Path):
    """(booster, candidate settings) of a saved ranker; refuses one trained on other features."""
    import lightgbm

    folder = Path(folder)
    saved = json.loads((folder / SETTINGS_FILE).read_text())
    if saved["features"] != list(FEATURES):
        raise ValueError(f"{folder / SETTINGS_FILE} was trained on features {saved['features']}, "
                         f"this code computes {list(FEATURES)}: retrain the ranker stage")
    candidates = saved["candidates"]
    settings = CandidateSettings(**{**candidates, "channels": tuple(candidates["channels"])})
    return lightgbm.Booster(model_file=str(folder / MODEL_FILE)), settings
