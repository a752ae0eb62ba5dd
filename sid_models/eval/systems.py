"""The systems of the evaluation report, each built from artifact folders as a searcher.

Every system answers `search(queries, k) -> list[list[(item_id, score)]]` from query text:
- `minilm`: MiniLM zero-shot, exact inner product over the items' MiniLM vectors;
- `tower`: the plain dual tower (λ_swap = 0, trained by the SCI trainer inside the eval
  stage), f_q(query) · f_i(item), exact search;
- `sci`: the SCI towers (input swap) with the consistent dual-view IVF index;
- `bm25`: the lexical baseline of the SCI stage;
- `gr_*_no_ranker`, `gr_tiger`: generative retrievers (`sid_models.generative.retriever.load_retriever`:
  the items of the top decoded SIDs ordered by SCI score);
- `gr_sarq_acrq`, `gr_vanilla_dpo`, `gr_rad_dpo`: the shipped generative recipe, the pool ranker
  (`sid_models.ranking`, trained on validation over the SFT model's pool) over that checkpoint's pool;
- `gr_sarq_acrq_beam`, `gr_vanilla_dpo_beam`, `gr_rad_dpo_beam`: those checkpoints' SIDs strictly
  in beam order (bucket_pool 1): the generation alone, which alignment acts on directly;
- `hybrid`: the hybrid ranker over the SFT pool ∪ BM25 top-N ∪ dense top-N.
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

# system -> (checkpoint stage, subfolder of its artifact, SID variant, ranker of the ranking stage or None,
#            decode.bucket_pool: None for the checkpoint's own, 1 for strict beam order)
GENERATIVE_SYSTEMS = {
    "gr_tiger": ("sft_checkpoint", "", "tiger", None, None),
    "gr_sarq_acrq_no_ranker": ("sft_checkpoint", "", "sarq_acrq", None, None),
    "gr_sarq_acrq": ("sft_checkpoint", "", "sarq_acrq", "pool", None),
    "gr_sarq_acrq_beam": ("sft_checkpoint", "", "sarq_acrq", None, 1),
    "gr_vanilla_dpo": ("dpo_checkpoint", "vanilla_dpo", "sarq_acrq", "pool", None),
    "gr_vanilla_dpo_beam": ("dpo_checkpoint", "vanilla_dpo", "sarq_acrq", None, 1),
    "gr_rad_dpo": ("dpo_checkpoint", "", "sarq_acrq", "pool", None),
    "gr_rad_dpo_beam": ("dpo_checkpoint", "", "sarq_acrq", None, 1),
    "hybrid": ("sft_checkpoint", "", "sarq_acrq", "hybrid", None),
}
SYSTEMS = ("bm25", "minilm", "tower", "sci", *GENERATIVE_SYSTEMS)
# the key to the system names, printed in the report
DESCRIPTIONS = {
    "bm25": "BM25 with English stemming and stopwords (params bm25): the lexical baseline",
    "minilm": "MiniLM zero-shot dense retrieval, exact search",
    "tower": "dual tower without input swap (λ_swap = 0), exact search",
    "sci": "SCI towers (input swap) through the consistent dual-view IVF index",
    "gr_tiger": "generative retrieval with TIGER-style fixed-length SIDs; decoded pool in SCI order",
    "gr_sarq_acrq_no_ranker": "generative retrieval with SARQ+ACRQ SIDs; decoded pool in SCI order",
    "gr_sarq_acrq": "generative retrieval with SARQ+ACRQ SIDs; decoded pool ranked by the learned ranker",
    "gr_vanilla_dpo": "gr_sarq_acrq after vanilla pairwise DPO",
    "gr_rad_dpo": "gr_sarq_acrq after RAD-DPO",
    "gr_sarq_acrq_beam": "the SFT model's decoded SIDs strictly in beam order (no pool, no ranker)",
    "gr_vanilla_dpo_beam": "the vanilla DPO model strictly in beam order",
    "gr_rad_dpo_beam": "the RAD-DPO model strictly in beam order",
    "hybrid": "learned ranker over the decoded pool ∪ BM25 top-N ∪ dense top-N",
}


def query_text_encoder(text_params: dict) -> TextEncoder:
    """MiniLM for query-time encoding: no cache, since every served query would add a cache shard."""
    return TextEncoder(text_params["model_name"], None, text_params["batch_size"], text_params["max_seq_length"],
                       progress=False)


def exact_search(item_vectors: np.ndarray) -> VectorSearch:
    """Exact inner-product search over `item_vectors` (rows = item rows)."""
    from ..sci.index import FlatIndex

    index = FlatIndex(item_vectors)
    return lambda vectors, k: index.search(vectors, k)


class DenseSearcher:
    """Query text -> vectors (`encode`) -> item rows (`vector_search`) -> item ids.

    BM25 fits the same shape with the identity as `encode` and its (scores, rows) search.
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


def load_bm25(prepared_folder: str | Path, bm25_params: dict) -> DenseSearcher:
    """BM25 over the item texts the encoders see (title | brand | category)."""
    from ..sci.bm25 import BM25Retriever

    prepared = PreparedDataset.load(prepared_folder)
    bm25 = BM25Retriever.from_params(prepared.item_text().tolist(), bm25_params)
    return DenseSearcher(prepared.items["item_id"].to_numpy(), lambda texts: texts, bm25.search)


def load_minilm(prepared_folder: str | Path, embeddings_folder: str | Path, text_params: dict) -> DenseSearcher:
    """MiniLM zero-shot dense retrieval over the text_embeddings artifact."""
    items = PreparedDataset.load(prepared_folder).items
    item_vectors = np.load(Path(embeddings_folder) / "items.npy")
    _check_rows(item_vectors, len(items), Path(embeddings_folder) / "items.npy")
    encoder = query_text_encoder(text_params)
    return DenseSearcher(items["item_id"].to_numpy(), encoder.encode, exact_search(item_vectors))


def plain_tower(prepared_folder: str | Path, embeddings_folder: str | Path, params: dict) -> DenseSearcher:
    """The dual-tower baseline: towers trained by the SCI trainer with λ_swap = 0, exact search.

    The pipeline keeps only the swap-trained towers, so the baseline is trained here with the
    same budget and seed as the `sci` section prescribes.
    """
    from ..sci.towers import TowerConfig
    from ..sci.train import TrainConfig, train_towers
    from ..text.stage import load_embeddings

    prepared = PreparedDataset.load(prepared_folder)
    item_base, query_base = load_embeddings(embeddings_folder)
    sci = deep_merge(params["sci"], {"train": {"lambda_swap": 0.0}})
    towers = train_towers(prepared, item_base, query_base, TowerConfig(in_dim=int(item_base.shape[1]), **sci["tower"]),
                          TrainConfig.from_params(sci, params["seed"])).towers
    encoder = query_text_encoder(params["text"])
    return DenseSearcher(prepared.items["item_id"].to_numpy(),
                         lambda texts: towers.encode_queries(encoder.encode(texts)),
                         exact_search(towers.encode_items(item_base)))


def load_sci(prepared_folder: str | Path, towers_folder: str | Path, index_folder: str | Path,
             text_params: dict) -> DenseSearcher:
    """SCI: swap-trained query tower, routed through the consistent dual-view IVF index (its nprobe)."""
    from ..sci.index import DualViewIndex
    from ..sci.towers import load_towers

    items = PreparedDataset.load(prepared_folder).items
    towers = load_towers(towers_folder)
    index = DualViewIndex.load(index_folder)
    encoder = query_text_encoder(text_params)
    return DenseSearcher(items["item_id"].to_numpy(), lambda texts: towers.encode_queries(encoder.encode(texts)),
                         lambda vectors, k: index.search(vectors, k))


def _check_rows(vectors: np.ndarray, n_items: int, path: Path) -> None:
    if vectors.ndim != 2 or vectors.shape[0] != n_items:
        raise ValueError(f"{path} has shape {vectors.shape}; expected one row per item ({n_items} rows)")


def generative_checkpoint(system: str, inputs: Mapping[str, Path]) -> tuple[Path, str]:
    """(checkpoint folder, SID variant) of a generative system."""
    stage, subfolder, variant, _, _ = GENERATIVE_SYSTEMS[system]
    folder = Path(inputs[stage]) / subfolder if subfolder else Path(inputs[stage])
    if not folder.is_dir():
        raise FileNotFoundError(f"system {system!r} needs the checkpoint folder {folder}")
    return folder, variant


def build_system(name: str, params: dict, inputs: Mapping[str, Path]):
    """The searcher of system `name` from the pipeline's artifact folders (stage name -> folder)."""
    if name == "bm25":
        return load_bm25(inputs["prepared_dataset"], params["bm25"])
    if name == "minilm":
        return load_minilm(inputs["prepared_dataset"], inputs["text_embeddings"], params["text"])
    if name == "tower":
        return plain_tower(inputs["prepared_dataset"], inputs["text_embeddings"], params)
    if name == "sci":
        return load_sci(inputs["prepared_dataset"], inputs["sci_towers"], inputs["sci_index"], params["text"])
    if name in GENERATIVE_SYSTEMS:
        from ..generative.retriever import load_retriever
        from ..ranking.stage import load_ranked_searcher

        checkpoint, variant = generative_checkpoint(name, inputs)
        ranker, bucket_pool = GENERATIVE_SYSTEMS[name][3:]
        if ranker is not None:
            return load_ranked_searcher(params, inputs, ranker, checkpoint, variant)
        return load_retriever(checkpoint, inputs["semantic_ids"], inputs["prepared_dataset"], inputs["sci_index"],
                              variant=variant, bucket_pool=bucket_pool)
    raise ValueError(f"unknown system {name!r}; known: {list(SYSTEMS)}")
