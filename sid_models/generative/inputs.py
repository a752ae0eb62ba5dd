"""What the generative model's encoder reads of a text (params `generative.encoder`).

- `wordpiece`: MiniLM's WordPiece ids; the model embeds them in a table of its own and its
  encoder is trained from scratch (`generative.init_from_minilm` starts the table from
  MiniLM's word embeddings).
- `minilm`: the token states of the pretrained all-MiniLM-L6-v2. Its lower L − k layers
  are frozen: they run once per text and are cached by content hash (`text/states.py`), so
  SFT never runs them per epoch; the model fine-tunes its own copy of the top k layers
  (`generative.minilm_tuned_layers`; 0 = all L layers frozen). On Home Depot, all frozen, it
  measured no better than `wordpiece` with the SCI query-vector memory (README, Benchmarks).

`EncoderReader.for_model(config, text).read(texts)` gives the `EncoderSources` of a list of texts;
`sources.batch(rows)` gives the model tensors of some of them (inputs, mask), cut to the
longest row: ids [B, S] long, or states [B, S, 384] float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from ..text.encoder import load_tokenizer
from ..text.states import StateEncoder, TokenStates, load_minilm
from .model import GenerativeConfig

ENCODERS = ("wordpiece", "minilm")


class EncoderSources(Protocol):
    def __len__(self) -> int: ...

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """WordPiece ids and attention mask, padded to `max_length`, int32 arrays [n, max_length]."""
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="np")
    return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int8)


@dataclass
class WordPieces:
    ids: np.ndarray      # int32 [n, S]
    mask: np.ndarray     # int8 [n, S], 1 = token

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.mask[np.asarray(rows, dtype=np.int64)]
        length = max(int(mask.sum(axis=1).max()), 1) if len(mask) else 1
        return (torch.as_tensor(self.ids[np.asarray(rows, dtype=np.int64), :length], dtype=torch.long),
                torch.as_tensor(mask[:, :length], dtype=torch.long))


@dataclass
class States:
    states: TokenStates

    def __len__(self) -> int:
        return len(self.states)

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = self.states.batch(rows)
        return states, mask.long()


def frozen_layers(tuned_layers: int) -> int:
    """MiniLM layers below the ones a model with `tuned_layers` fine-tunes."""
    n_layers = load_minilm().config.num_hidden_layers
    if not 0 <= tuned_layers <= n_layers:
        raise ValueError(f"generative.minilm_tuned_layers must be in [0, {n_layers}], got {tuned_layers}")
    return n_layers - tuned_layers


class EncoderReader:
    """Texts -> the `EncoderSources` an `encoder` (ENCODERS) reads, at most `max_length` tokens
    each. `text`: params text (model_name, batch_size) or a checkpoint's copy of it;
    `cache_dir`: the token-state cache (None: computed on every call, as a server does)."""

    def __init__(self, encoder: str, tuned_layers: int, max_length: int, text: dict,
                 cache_dir: str | Path | None = None, progress: bool = False):
        if encoder not in ENCODERS:
            raise ValueError(f"generative encoder {encoder!r} is not one of {ENCODERS}")
        self.max_length = max_length
        self.states = None
        if encoder == "minilm":
            self.states = StateEncoder(text["model_name"], frozen_layers(tuned_layers), max_length,
                                       int(text["batch_size"]), cache_dir, progress=progress)

    @classmethod
    def for_model(cls, config: GenerativeConfig, text: dict, cache_dir: str | Path | None = None,
                  progress: bool = False) -> "EncoderReader":
        return cls(config.encoder, config.tuned_layers, config.max_enc_len, text, cache_dir, progress)

    def read(self, texts: Sequence[str], desc: str = "texts") -> EncoderSources:
        texts = [str(text) for text in texts]
        if self.states is None:
            return WordPieces(*tokenize(load_tokenizer(), texts, self.max_length))
        return States(self.states.encode(texts, desc))
