"""The generative retriever: query text -> constrained beam search over SIDs -> items.

`load_retriever(checkpoint_folder, sids_folder, prepared_folder, variant)`
returns a `GenerativeRetriever` whose `search(queries, k)` answers
`[[(item_id, score), ...], ...]`, best first:

1. the query's encoder input (WordPiece ids, or MiniLM token states: `inputs.py`) goes through
   the seq2seq model and one batched beam search
   under the SID trie (`trie.py`) with `max(beam_size, k)` beams;
2. the finished SIDs, in beam order, are taken in groups of `bucket_pool` (decode params);
   each group's leaf buckets (every item holding one of its SIDs) are pooled and ordered by
   the SCI score f_q(query) · f_i(item), the dual-tower score the SIDs were quantised from.
   bucket_pool 1 keeps the beam order of SIDs and orders only inside a bucket; a larger pool
   lets SCI reorder the items of several top SIDs (on Home Depot, pooling the 20 beams
   raised test Recall@10 from .11 to .27);
3. items are emitted until k; an item's score is its group's best beam score (length-
   normalised log-probability), so items of one group share a score and their order is the
   SCI order.

Bucket ranking needs the query tower and the items' item-view vectors. They travel with
the checkpoint in `sci/` (towers.pt, towers.json, item_item_view.npy, retriever.json with
the decode and text-encoder settings), written by `write_retriever_assets`; a model in a
subfolder (a baseline variant's `tiger/`, `vanilla_dpo/`) uses its parent's `sci/`. A checkpoint trained
elsewhere from an SFT checkpoint (DPO) gets them with `copy_retriever_assets`.
Bucket ranking needs exact f_q·f_i over a handful of items, not an ANN search, so the SCI
index is not loaded.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.schema import PreparedDataset
from ..quantize.table import resolve_variant
from .data import read_sid_table
from .inputs import EncoderReader
from .model import Seq2SeqRetriever, load_model
from .trie import BeamResult, SidTrie, TrieConstraint, beam_search
from .vocab import SidVocab

ASSETS = "sci"
SETTINGS = "retriever.json"
ITEM_VIEW_FILE = "item_item_view.npy"


def write_retriever_assets(out: str | Path, towers_folder: str | Path, params: dict) -> Path:
    """Copy the SCI query tower + item views into `out/sci/` with the decode and text settings."""
    from ..sci.towers import CONFIG_FILE, tower_files

    target = Path(out) / ASSETS
    target.mkdir(parents=True, exist_ok=True)
    if not (Path(towers_folder) / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"sci_towers artifact lacks {Path(towers_folder) / CONFIG_FILE}")
    for name in (*tower_files(towers_folder), ITEM_VIEW_FILE):
        source = Path(towers_folder) / name
        if not source.is_file():
            raise FileNotFoundError(f"sci_towers artifact lacks {source}")
        shutil.copy2(source, target / name)
    text = params["text"]
    settings = {"decode": dict(params["decode"]),
                "text": {key: text[key] for key in ("model_name", "max_seq_length", "batch_size")}}
    (target / SETTINGS).write_text(json.dumps(settings, indent=2))
    return target


def copy_retriever_assets(source_checkpoint: str | Path, out: str | Path) -> Path:
    """Give a checkpoint derived from `source_checkpoint` (e.g. DPO from SFT) the same `sci/`."""
    source = _assets_folder(Path(source_checkpoint))
    target = Path(out) / ASSETS
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def _assets_folder(checkpoint: Path) -> Path:
    for candidate in (checkpoint / ASSETS, checkpoint.parent / ASSETS):
        if (candidate / SETTINGS).is_file():
            return candidate
    raise FileNotFoundError(f"no retriever assets ({ASSETS}/{SETTINGS}) in {checkpoint} or its parent: "
                            "write them with generative.retriever.write_retriever_assets / copy_retriever_assets")


@dataclass
class Buckets:
    """Leaf buckets in CSR form: SID i of the trie holds item rows rows[ptr[i]:ptr[i+1]]."""

    ptr: np.ndarray
    rows: np.ndarray

    @classmethod
    def build(cls, trie: SidTrie, item_sids: Sequence[tuple[int, ...]]) -> "Buckets":
        sid_of_row = np.array([trie.sid_index[sid] for sid in item_sids], dtype=np.int64)
        order = np.argsort(sid_of_row, kind="stable")
        counts = np.bincount(sid_of_row, minlength=len(trie.sids))
        return cls(ptr=np.concatenate([[0], np.cumsum(counts)]), rows=order)

    def items(self, sid: int) -> np.ndarray:
        """The item rows of SID `sid`."""
        return self.rows[self.ptr[sid]:self.ptr[sid + 1]]

    def items_of(self, sids: Sequence[int]) -> np.ndarray:
        """The item rows of every SID of `sids`, bucket after bucket in their order."""
        if not len(sids):
            return np.zeros(0, dtype=self.rows.dtype)
        return np.concatenate([self.items(sid) for sid in sids])

    def sizes(self) -> np.ndarray:
        """[n_sids] items per SID."""
        return np.diff(self.ptr)

    def sid_of_row(self) -> np.ndarray:
        """[n_items] the SID index of each item row: the inverse of the buckets."""
        out = np.empty(len(self.rows), dtype=np.int64)
        out[self.rows] = np.repeat(np.arange(len(self.ptr) - 1), self.sizes())
        return out


class SidDecoder:
    """Query text -> ranked SIDs: the model and the trie, no item catalogue (step 1 of the module
    docstring). What a GPU worker needs; `GenerativeRetriever` adds the items."""

    def __init__(self, model: Seq2SeqRetriever, reader: EncoderReader, trie: SidTrie, beam_size: int, length_penalty: float,
                 batch_size: int, device: torch.device | str = "cpu",
                 encode_queries: Callable[[list[str]], np.ndarray] | None = None):
        self.model = model.to(device).eval()
        self.encode_queries = encode_queries       # query text -> SCI query vectors f_q (a query-vector model needs it)
        self.reader, self.trie = reader, trie.to(device)
        self.beam_size, self.length_penalty, self.batch_size = beam_size, length_penalty, batch_size
        self.device = torch.device(device)

    def _inputs(self, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, mask = self.reader.read(queries, desc="queries").batch(np.arange(len(queries)))
        return inputs.to(self.device), mask.to(self.device)

    def _query_vectors(self, queries: list[str], query_vectors: np.ndarray | None) -> torch.Tensor | None:
        if not self.model.config.query_vector_dim:
            return None
        if query_vectors is None:
            if self.encode_queries is None:
                raise ValueError("this model reads SCI query vectors: give encode_queries or query_vectors")
            query_vectors = self.encode_queries(queries)
        return torch.as_tensor(np.asarray(query_vectors), dtype=torch.float32, device=self.device)

    def decode(self, queries: list[str], beams: int, constraint=None,
               query_vectors: np.ndarray | None = None) -> BeamResult:
        """Beam search for one batch of queries; the trie constraint unless another is given.
        `query_vectors`: the queries' f_q, when already computed (else encoded here if the model reads them)."""
        inputs, mask = self._inputs(queries)
        return beam_search(self.model, inputs, mask, beams, self.trie.max_length + 1,
                           constraint if constraint is not None else TrieConstraint(self.trie),
                           self.length_penalty, self._query_vectors(queries, query_vectors))

    def search_sids(self, queries: list[str], k: int,
                    query_vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(SID indices [n, W] into `trie.sids`, -1 for empty slots; scores [n, W]), best first."""
        beams = max(self.beam_size, k)
        sids, scores = [], []
        for start in range(0, len(queries), self.batch_size):
            chunk = None if query_vectors is None else query_vectors[start:start + self.batch_size]
            result = self.decode(queries[start:start + self.batch_size], beams, query_vectors=chunk)
            sid = torch.where(result.finished, result.state.sid.view(result.finished.shape), -1)
            sids.append(sid.cpu().numpy())
            scores.append(result.scores.float().cpu().numpy())
        return np.concatenate(sids), np.concatenate(scores)


class GenerativeRetriever(SidDecoder):
    """A `SidDecoder` plus the catalogue: SIDs resolved to leaf buckets, buckets ordered by SCI score."""

    def __init__(self, model: Seq2SeqRetriever, reader: EncoderReader, trie: SidTrie, buckets: Buckets, item_ids: np.ndarray,
                 item_vectors: np.ndarray, encode_queries: Callable[[list[str]], np.ndarray], beam_size: int,
                 length_penalty: float, batch_size: int, device: torch.device | str = "cpu", bucket_pool: int = 1):
        super().__init__(model, reader, trie, beam_size, length_penalty, batch_size, device, encode_queries)
        if bucket_pool < 1:
            raise ValueError(f"decode.bucket_pool must be >= 1, got {bucket_pool}")
        self.buckets, self.item_ids, self.item_vectors = buckets, item_ids, item_vectors
        self.bucket_pool = bucket_pool

    def search(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        queries = [str(query) for query in queries]
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        query_vectors = self.encode_queries(queries)
        sids, scores = self.search_sids(queries, k, query_vectors)
        return self.resolve(queries, sids, scores, k, query_vectors)

    def resolve(self, queries: list[str], sids: np.ndarray, scores: np.ndarray, k: int,
                query_vectors: np.ndarray | None = None, bucket_pool: int | None = None) -> list[list[tuple[str, float]]]:
        """Top-k items per query from `search_sids` output (which may come from another machine
        decoding with the same trie): groups of `bucket_pool` SIDs (None: this retriever's) in beam
        order, the items of a group's buckets SCI-ordered (module docstring, step 2)."""
        bucket_pool = self.bucket_pool if bucket_pool is None else bucket_pool
        if bucket_pool < 1:
            raise ValueError(f"bucket_pool must be >= 1, got {bucket_pool}")
        if len(sids) != len(queries) or len(scores) != len(queries):
            raise ValueError(f"{len(queries)} queries but SIDs for {len(sids)} and scores for {len(scores)}")
        if query_vectors is None:
            query_vectors = self.encode_queries(queries)
        results = []
        for query_vector, query_sids, query_scores in zip(query_vectors, sids, scores):
            finished = int(np.argmax(query_sids < 0)) if (query_sids < 0).any() else len(query_sids)
            found: list[tuple[str, float]] = []
            for start in range(0, finished, bucket_pool):
                if len(found) >= k:
                    break
                group = query_sids[start:min(start + bucket_pool, finished)]
                rows = self.buckets.items_of(group)
                if len(rows) > 1:
                    rows = rows[np.argsort(-(self.item_vectors[rows] @ query_vector), kind="stable")]
                score = float(query_scores[start])
                found.extend((str(self.item_ids[row]), score) for row in rows[:k - len(found)])
            results.append(found)
        return results


def assets_folder(checkpoint_folder: str | Path) -> Path:
    """The `sci/` folder (query tower, item views, retriever.json) serving a checkpoint's models."""
    return _assets_folder(Path(checkpoint_folder))


def catalogue_sids(sids_folder: str | Path, prepared_folder: str | Path,
                   variant: str | None) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """(item ids in catalogue order, the `variant` SID of each; None: the shipped variant's):
    what the trie and buckets are built from."""
    item_ids = PreparedDataset.load(prepared_folder).items["item_id"].astype(str).to_numpy()
    table = read_sid_table(sids_folder, variant)
    sid_by_item = dict(zip(table["item_id"], table["sid"]))
    missing = [item for item in item_ids if item not in sid_by_item]
    if missing:
        raise ValueError(f"{len(missing)} items of {prepared_folder} have no {variant} SID, e.g. {missing[:3]}")
    return item_ids, [tuple(int(code) for code in sid_by_item[item]) for item in item_ids]


def load_retriever(checkpoint_folder: str | Path, sids_folder: str | Path, prepared_folder: str | Path,
                   variant: str | None = None,
                   device: torch.device | str = "cpu", bucket_pool: int | None = None) -> GenerativeRetriever:
    """A ready `GenerativeRetriever` from artifact folders (see module docstring): the model in
    `checkpoint_folder` (a checkpoint stage's folder, or a model subfolder such as `tiger/`)
    decoding the SIDs of `variant` (None: the semantic_ids folder's shipped one). `bucket_pool`
    overrides the checkpoint's decode setting (e.g. to compare poolings on one model)."""
    from ..sci.towers import load_towers
    from ..text.encoder import TextEncoder

    variant = resolve_variant(sids_folder, variant)
    folder = Path(checkpoint_folder)
    if not (folder / "model.pt").is_file():
        raise FileNotFoundError(f"no model at {folder} (model.pt): not a checkpoint folder or model subfolder")
    model = load_model(folder, map_location=device)
    vocab = SidVocab.load(folder)
    if vocab.size != model.config.dec_vocab_size:
        raise ValueError(f"{folder}: vocab.json has {vocab.size} tokens, model decodes {model.config.dec_vocab_size}")
    item_ids, item_sids = catalogue_sids(sids_folder, prepared_folder, variant)
    trie = SidTrie.build(item_sids, vocab)
    assets = _assets_folder(folder)
    item_vectors = np.load(assets / ITEM_VIEW_FILE)
    if len(item_vectors) != len(item_ids):
        raise ValueError(f"{assets / ITEM_VIEW_FILE} has {len(item_vectors)} rows for {len(item_ids)} items")
    settings = json.loads((assets / SETTINGS).read_text())
    towers = load_towers(assets)
    text = TextEncoder(settings["text"]["model_name"], None, settings["text"]["batch_size"],
                       settings["text"]["max_seq_length"], progress=False)
    decode = settings["decode"]
    return GenerativeRetriever(model, EncoderReader.for_model(model.config, settings["text"]), trie, Buckets.build(trie, item_sids), item_ids, item_vectors,
                               lambda texts: towers.encode_query_texts(texts, text.encode),
                               beam_size=int(decode["beam_size"]), length_penalty=float(decode["length_penalty"]),
                               batch_size=int(decode["batch_size"]), device=device,
                               # checkpoints written before bucket_pool existed ranked one bucket at a time
                               bucket_pool=int(bucket_pool if bucket_pool is not None else decode.get("bucket_pool", 1)))

