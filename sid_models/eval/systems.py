"""The systems of the evaluation report: each a row of params `eval.systems`, built by the
component its `component` names (`COMPONENTS`) from artifact folders, as a searcher.

Every system answers `search(queries, k) -> list[list[(item_id, score)]]` from query text.
The components:
- `bm25`: the lexical baseline (`sid_models.lexical`);
- `minilm`: MiniLM zero-shot, exact inner product over the items' MiniLM vectors;
- `dual_tower`: a dual tower trained by the SCI trainer inside the eval stage with the row's
  `sci_overrides` (λ_swap = 0: the plain dual tower), f_q(query) · f_i(item), exact search;
- `sci`: the SCI towers (input swap) with the consistent dual-view IVF index;
- `generative`: a generative checkpoint (`checkpoint` stage, `subfolder`, SID `variant`):
  without `ranker`, `sid_models.generative.retriever.load_retriever` (the items of the top
  decoded SIDs in SCI order, `bucket_pool` SIDs pooled: 1 is strict beam order); with `ranker`,
  that ranker of the ranking stage over the checkpoint's pool (`sid_models.ranking`).
A new system of an existing component is one row in params; a new component is one function
here and its entry in `COMPONENTS`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..data.schema import PreparedDataset
from ..params import deep_merge
from ..text.encoder import TextEncoder

QueryVectors = Callable[[list[str]], np.ndarray]
VectorSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def query_text_encoder(text_params: dict) -> TextEncoder:
    """MiniLM for query-time encoding: no cache, since every served query would add a cache shard."""
    return TextEncoder(text_params["model_name"], None, text_params["batch_size"], text_params["max_seq_length"],
                       progress=False)


def exact_search(item_vectors: np.ndarray) -> VectorSearch:
    """Exact inner-product search over `item_vectors` (rows = item rows)."""
    from ..sci.index import FlatIndex

    index = FlatIndex(item_vectors)
    return lambda vectors, k: index.search(vectors, k)


class ItemSearcher:
    """Query text -> query representation (`encode`) -> (scores, item rows) (`vector_search`) -> item ids.

    Dense systems encode to vectors; BM25 keeps the text (the identity as `encode`) and
    searches with its own (scores, rows) search.
    """

    def __init__(self, item_ids: np.ndarray, encode: QueryVectors, vector_search: VectorSearch):
        self.item_ids = np.asarray(item_ids).astype(str)
        self.encode = encode
        self.vector_search = vector_search

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        if not queries:
            return []
        k = min(k, len(self.item_ids))
        scores, rows = self.vector_search(self.encode(list(queries)), k)
        return [[(self.item_ids[row], float(score)) for score, row in zip(query_scores, query_rows) if row >= 0]
                for query_scores, query_rows in zip(scores, rows)]


def load_bm25(prepared_folder: str | Path, bm25_params: dict) -> ItemSearcher:
    """BM25 over the item texts the encoders see (title | brand | category)."""
    from ..lexical.bm25 import BM25Retriever

    prepared = PreparedDataset.load(prepared_folder)
    bm25 = BM25Retriever.from_params(prepared.item_text().tolist(), bm25_params)
    return ItemSearcher(prepared.items["item_id"].to_numpy(), lambda texts: texts, bm25.search)


def load_minilm(prepared_folder: str | Path, embeddings_folder: str | Path, text_params: dict) -> ItemSearcher:
    """MiniLM zero-shot dense retrieval over the text_embeddings artifact."""
    items = PreparedDataset.load(prepared_folder).items
    item_vectors = np.load(Path(embeddings_folder) / "items.npy")
    _check_rows(item_vectors, len(items), Path(embeddings_folder) / "items.npy")
    encoder = query_text_encoder(text_params)
    return ItemSearcher(items["item_id"].to_numpy(), encoder.encode, exact_search(item_vectors))


def dual_tower(prepared_folder: str | Path, embeddings_folder: str | Path, params: dict,
               sci_overrides: dict) -> ItemSearcher:
    """A dual-tower baseline trained here by the SCI trainer, with `sci_overrides` merged over the
    sci section (λ_swap = 0: the plain dual tower), searched exactly.

    The pipeline keeps only the swap-trained towers, so the baseline is trained here with the
    same budget and seed as the `sci` section prescribes.
    """
    from ..sci.train import TrainConfig, new_towers, tower_inputs, train_towers
    from ..text.stage import load_embeddings

    prepared = PreparedDataset.load(prepared_folder)
    item_base, query_base = load_embeddings(embeddings_folder)
    sci = deep_merge(params["sci"], sci_overrides)
    config = TrainConfig.from_params(sci, params["seed"])
    towers = new_towers(sci["tower"], params["text"], prepared, item_base, query_base, config)
    item_inputs, query_inputs = tower_inputs(towers, prepared, item_base, query_base, params["text"])
    towers = train_towers(prepared, towers, item_inputs, query_inputs, config).towers
    encoder = query_text_encoder(params["text"])
    return ItemSearcher(prepared.items["item_id"].to_numpy(),
                        lambda texts: towers.encode_query_texts(texts, encoder.encode),
                        exact_search(towers.encode_items(item_inputs)))


def load_sci(prepared_folder: str | Path, towers_folder: str | Path, index_folder: str | Path,
             text_params: dict) -> ItemSearcher:
    """SCI: swap-trained query tower, routed through the consistent dual-view IVF index (its nprobe)."""
    from ..sci.index import DualViewIndex
    from ..sci.towers import load_towers

    items = PreparedDataset.load(prepared_folder).items
    towers = load_towers(towers_folder)
    index = DualViewIndex.load(index_folder)
    encoder = query_text_encoder(text_params)
    return ItemSearcher(items["item_id"].to_numpy(), lambda texts: towers.encode_query_texts(texts, encoder.encode),
                         lambda vectors, k: index.search(vectors, k))


def _check_rows(vectors: np.ndarray, n_items: int, path: Path) -> None:
    if vectors.ndim != 2 or vectors.shape[0] != n_items:
        raise ValueError(f"{path} has shape {vectors.shape}; expected one row per item ({n_items} rows)")


def system_rows(params: dict) -> dict[str, dict]:
    """params `eval.systems`, each row checked against its component's settings; a row set to
    null (e.g. by an override) is switched off."""
    if not isinstance(params["eval"]["systems"], dict):
        raise ValueError("eval.systems must map system names to rows {component: ..., about: ..., settings}")
    rows = {name: row for name, row in params["eval"]["systems"].items() if row is not None}   # null: off
    if not rows:
        raise ValueError("eval.systems has no system switched on")
    for name, row in rows.items():
        if row.get("component") not in COMPONENTS:
            raise ValueError(f"eval.systems.{name}: component {row.get('component')!r} is not one of {sorted(COMPONENTS)}")
        expected = {"component", "about", *COMPONENT_SETTINGS[row["component"]]}
        if set(row) != expected:
            raise ValueError(f"eval.systems.{name}: a {row['component']} row has keys {sorted(expected)}, "
                             f"got {sorted(row)}")
    return rows


def generative_checkpoint(row: dict, inputs: Mapping[str, Path]) -> Path:
    """The checkpoint folder a generative system row reads."""
    folder = Path(inputs[row["checkpoint"]]) / row["subfolder"] if row["subfolder"] else Path(inputs[row["checkpoint"]])
    if not folder.is_dir():
        raise FileNotFoundError(f"a {row['checkpoint']}/{row['subfolder']} system needs the checkpoint folder {folder}")
    return folder


def load_generative(params: dict, inputs: Mapping[str, Path], row: dict):
    from ..generative.retriever import load_retriever
    from ..ranking.stage import load_ranked_searcher

    checkpoint = generative_checkpoint(row, inputs)
    if row["ranker"] is not None:
        return load_ranked_searcher(params, inputs, row["ranker"], checkpoint, row["variant"])
    return load_retriever(checkpoint, inputs["semantic_ids"], inputs["prepared_dataset"],
                          variant=row["variant"], bucket_pool=row["bucket_pool"])


# component -> builder(params, stage folders, row); the settings a row of it carries besides component and about
COMPONENTS: dict[str, Callable[[dict, Mapping[str, Path], dict], object]] = {
    "bm25": lambda params, inputs, row: load_bm25(inputs["prepared_dataset"], params["bm25"]),
    "minilm": lambda params, inputs, row: load_minilm(inputs["prepared_dataset"], inputs["text_embeddings"],
                                                      params["text"]),
    "dual_tower": lambda params, inputs, row: dual_tower(inputs["prepared_dataset"], inputs["text_embeddings"], params,
                                                         row["sci_overrides"]),
    "sci": lambda params, inputs, row: load_sci(inputs["prepared_dataset"], inputs["sci_towers"], inputs["sci_index"],
                                                params["text"]),
    "generative": load_generative,
}
COMPONENT_SETTINGS = {"bm25": (), "minilm": (), "dual_tower": ("sci_overrides",), "sci": (),
                      "generative": ("checkpoint", "subfolder", "variant", "ranker", "bucket_pool")}


def build_system(name: str, params: dict, inputs: Mapping[str, Path]):
    """The searcher of system `name` (a row of eval.systems) from the pipeline's artifact folders."""
    rows = system_rows(params)
    if name not in rows:
        raise ValueError(f"unknown system {name!r}; eval.systems has {list(rows)}")
    return COMPONENTS[rows[name]["component"]](params, inputs, rows[name])
