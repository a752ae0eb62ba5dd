"""SCI towers that fine-tune MiniLM (`sci.tower.kind: minilm`): each tower owns a copy of its top layers.

all-MiniLM-L6-v2 (L = 6 layers) is split at layer L − k. The lower L − k layers are frozen
and shared: their token states are computed once per text and cached
(`sid_models.text.states`). Each tower trains its own copy of the top k layers, initialised
from MiniLM's weights, then mean-pools the tokens and L2-normalises:

    h_0 = MiniLM_{1..L−k}(text)                            (frozen, cached)
    a = LN_1(h + MHA(h));  h' = LN_2(a + W_2 · GELU(W_1 · a))   (BERT post-LN block, k of them)
    f(text) = normalize(mean over tokens t of h_k[t])

Untrained, f_q = f_i = the MiniLM sentence vector (all-MiniLM-L6-v2 pools exactly so), as for
the MLP towers; trained on its own kind of text, each tower moves away from the other, which is
the misalignment the input swap is meant to repair. k = L fine-tunes every layer (the GPU
preset); on 2 CPU cores one or two layers fit the time budget.
"""
from __future__ import annotations

import json
from functools import cached_property
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..text.encoder import cache_path
from ..text.states import StateEncoder, TokenStates, load_minilm
from .towers import CONFIG_FILE, WEIGHTS_FILE
ENCODE_BATCH = 256
LENGTH_CHUNK = 32      # rows per forward chunk of similar length


@dataclass
class TextTowerConfig:
    """params sci.tower.kinds.minilm, plus the text model's name (params text.model_name)."""
    model_name: str
    finetune_layers: int
    max_seq_length: int
    dropout: float

    @property
    def frozen_layers(self) -> int:
        return load_minilm().config.num_hidden_layers - self.finetune_layers


class Block(nn.Module):
    """One BERT encoder layer (post-LN), with MiniLM's parameter layout."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attention_out, self.attention_norm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=eps)
        self.up, self.down, self.out_norm = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, width, dim = h.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, width, self.heads, dim // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(self.query(h)), split(self.key(h)), split(self.value(h)),
                                                  attn_mask=mask[:, None, None, :])
        attended = attended.transpose(1, 2).reshape(batch, width, dim)
        a = self.attention_norm(h + self.dropout(self.attention_out(attended)))
        return self.out_norm(a + self.dropout(self.down(F.gelu(self.up(a)))))


LAYOUT = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
          "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
          "up": "intermediate.dense", "down": "output.dense", "out_norm": "output.LayerNorm"}


def minilm_block(layer: int, dropout: float) -> Block:
    """A Block holding a copy of MiniLM's encoder layer `layer` (0-based)."""
    minilm = load_minilm()
    config = minilm.config
    block = Block(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                  config.layer_norm_eps, dropout)
    source = dict(minilm.encoder.layer[layer].named_parameters())
    with torch.no_grad():
        for name, prefix in LAYOUT.items():
            module = getattr(block, name)
            module.weight.copy_(source[f"{prefix}.weight"])
            module.bias.copy_(source[f"{prefix}.bias"])
    return block


class TextTower(nn.Module):
    """Own copies of MiniLM's top k layers over cached lower-layer token states, mean-pooled."""

    def __init__(self, config: TextTowerConfig):
        super().__init__()
        first = config.frozen_layers
        self.blocks = nn.ModuleList(minilm_block(layer, config.dropout)
                                    for layer in range(first, first + config.finetune_layers))

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Unit vectors [B, d] of padded (states [B, T, d], mask [B, T]).

        Rows run in chunks of similar length, each cut to its longest row: a batch of titles
        padded to its longest one would spend most of its time on padding.
        """
        states, mask = inputs
        lengths = mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        pooled = []
        for rows in order.split(LENGTH_CHUNK):
            width = max(int(lengths[rows].max()), 1)
            h, chunk_mask = states[rows, :width], mask[rows, :width]
            for block in self.blocks:
                h = block(h, chunk_mask)
            weights = chunk_mask.unsqueeze(-1).to(h.dtype)
            pooled.append((h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))
        return F.normalize(torch.cat(pooled)[torch.argsort(order)], dim=-1)


class TextDualTower(nn.Module):
    """f_q and f_i as fine-tuned MiniLM top layers; no parameter is shared between them."""

    kind = "minilm"
    files = (WEIGHTS_FILE, CONFIG_FILE)

    def __init__(self, config: TextTowerConfig):
        super().__init__()
        if not 1 <= config.finetune_layers <= load_minilm().config.num_hidden_layers:
            raise ValueError(f"sci.tower.kinds.minilm.finetune_layers must be in [1, "
                             f"{load_minilm().config.num_hidden_layers}], got {config.finetune_layers}")
        self.config = config
        self.query_tower = TextTower(config)
        self.item_tower = TextTower(config)

    def state_encoder(self, batch_size: int, cache_dir: str | Path | None, progress: bool = True) -> StateEncoder:
        """The frozen lower layers whose states the towers read."""
        return StateEncoder(self.config.model_name, self.config.frozen_layers, self.config.max_seq_length,
                            batch_size, cache_dir, progress)

    @classmethod
    def untrained(cls, folder: Path, settings: dict) -> "TextDualTower":
        """Towers of the shape `settings` (towers.json less `kind`) describe, for the saved weights."""
        return cls(TextTowerConfig(**settings))

    @staticmethod
    def quantised_width(settings: dict) -> int | None:
        return None

    @torch.no_grad()
    def _encode(self, tower: TextTower, inputs: TokenStates) -> np.ndarray:
        was_training = self.training
        self.eval()
        # length-sorted batches: a batch pads to its longest text
        lengths = np.diff(inputs.offsets)
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(inputs), load_minilm().config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), ENCODE_BATCH):
            rows = order[start:start + ENCODE_BATCH]
            out[rows] = tower(inputs.batch(rows)).numpy()
        self.train(was_training)
        return out

    def encode_queries(self, inputs: TokenStates) -> np.ndarray:
        """f_q of token-state inputs (queries, or items for the coarse index level)."""
        return self._encode(self.query_tower, inputs)

    def encode_items(self, inputs: TokenStates) -> np.ndarray:
        """f_i of token-state inputs."""
        return self._encode(self.item_tower, inputs)

    def read_texts(self, texts: list[str], sentence_vectors: Callable[[list[str]], np.ndarray], text_params: dict,
                   desc: str) -> TokenStates:
        """What the towers read of `texts` in training: the token states of the frozen lower layers,
        cached under params text.cache_dir; `sentence_vectors` is not needed."""
        return self.state_encoder(text_params["batch_size"], cache_path(text_params)).encode(texts, desc)

    def encode_query_texts(self, texts: list[str], sentence_vectors: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """f_q of raw query texts: the frozen lower layers (uncached), then the query tower;
        `sentence_vectors` (MiniLM sentence vectors, what the MLP towers read) is not needed."""
        return self.encode_queries(self._query_states.encode(texts))

    @cached_property
    def _query_states(self) -> StateEncoder:
        """Served queries' frozen lower layers: uncached (every query is new), built once per tower."""
        return self.state_encoder(ENCODE_BATCH, None, progress=False)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({"kind": self.kind, **asdict(self.config)}, indent=2))
