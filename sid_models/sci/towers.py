"""SCI dual towers: a query tower f_q and an item tower f_i of the same shape.

Each tower maps a 384-d MiniLM feature x to a 256-d unit vector:

    h_0 = x
    h_{l+1} = h_l + W2_l · GELU(W1_l · LayerNorm(h_l))      (residual blocks)
    f(x) = normalize(P · h_L)                                (projection 384 -> 256)

Why this shape: about two thirds of relevant Home Depot test pairs are cold items that no
training pair ever shows the towers, so an untrained tower must already be as good as
MiniLM zero-shot and training must only bend that geometry. Each block's W2 starts at zero
(the block is the identity) and P starts as the top-256 right singular vectors of the
uncentred base features (the rank-256 projection that best preserves their inner
products), or a random orthogonal matrix; both towers start from the same P, so at
initialisation f_q = f_i ≈ MiniLM. P stays trainable when `learn_projection` is set.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS_FILE = "towers.pt"
CONFIG_FILE = "towers.json"


@dataclass
class TowerConfig:
    """params sci.tower, with in_dim the width of the base (MiniLM) vectors."""
    in_dim: int
    out_dim: int
    hidden_dim: int
    n_blocks: int
    dropout: float
    learn_projection: bool


class ResidualBlock(nn.Module):
    def __init__(self, config: TowerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.in_dim)
        self.up = nn.Linear(config.in_dim, config.hidden_dim)
        self.down = nn.Linear(config.hidden_dim, config.in_dim)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.zeros_(self.down.weight)  # the block starts as the identity map
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.down(F.gelu(self.up(self.norm(x)))))


class Tower(nn.Module):
    def __init__(self, config: TowerConfig, projection: torch.Tensor):
        super().__init__()
        if tuple(projection.shape) != (config.out_dim, config.in_dim):
            raise ValueError(f"projection must be [{config.out_dim}, {config.in_dim}], got {tuple(projection.shape)}")
        self.blocks = nn.ModuleList(ResidualBlock(config) for _ in range(config.n_blocks))
        self.projection = nn.Linear(config.in_dim, config.out_dim, bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(projection)
        self.projection.weight.requires_grad_(config.learn_projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.projection(x), dim=-1)


class DualTower(nn.Module):
    """f_q (query tower) and f_i (item tower); no parameter is shared between them."""

    kind = "mlp"
    files = (WEIGHTS_FILE, CONFIG_FILE)

    def __init__(self, config: TowerConfig, projection: torch.Tensor):
        super().__init__()
        self.config = config
        self.query_tower = Tower(config, projection)
        self.item_tower = Tower(config, projection)

    @classmethod
    def untrained(cls, folder: Path, settings: dict) -> "DualTower":
        """Towers of the shape `settings` (towers.json less `kind`) describe, for the saved weights."""
        config = TowerConfig(**settings)
        return cls(config, torch.zeros(config.out_dim, config.in_dim))

    @staticmethod
    def quantised_width(settings: dict) -> int | None:
        return None

    @torch.no_grad()
    def _encode(self, tower: Tower, base: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        base = np.asarray(base, dtype=np.float32)
        if base.ndim != 2 or base.shape[1] != self.config.in_dim:
            raise ValueError(f"base features must be [n, {self.config.in_dim}], got {base.shape}")
        was_training = self.training
        self.eval()
        out = [tower(torch.from_numpy(base[start:start + batch_size])).numpy()
               for start in range(0, len(base), batch_size)]
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.config.out_dim), dtype=np.float32)

    def encode_queries(self, base: np.ndarray) -> np.ndarray:
        """f_q: the query view (of queries, or of items for the coarse index level)."""
        return self._encode(self.query_tower, base)

    def encode_items(self, base: np.ndarray) -> np.ndarray:
        """f_i: the item view (of items, or of queries in the swap loss)."""
        return self._encode(self.item_tower, base)

    def read_texts(self, texts: list[str], sentence_vectors: Callable[[list[str]], np.ndarray], text_params: dict,
                   desc: str) -> np.ndarray:
        """What the towers read of `texts` in training: their MiniLM sentence vectors."""
        return sentence_vectors(texts)

    def encode_query_texts(self, texts: list[str], sentence_vectors: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """f_q of raw query texts, through their MiniLM sentence vectors."""
        return self.encode_queries(sentence_vectors(texts))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({"kind": self.kind, **asdict(self.config)}, indent=2))


def initial_projection(base: np.ndarray, out_dim: int, kind: str, seed: int) -> torch.Tensor:
    """The starting projection P [out_dim, in_dim].

    `pca`: top right singular vectors of the uncentred `base` rows (inner products of the
    features are best preserved in least squares); `orthogonal`: a seeded random
    orthogonal matrix (distances preserved in expectation only).
    """
    base = torch.as_tensor(np.asarray(base), dtype=torch.float64)
    in_dim = base.shape[1]
    if out_dim > in_dim:
        raise ValueError(f"sci.tower.out_dim={out_dim} exceeds the base dimension {in_dim}")
    if kind == "pca":
        if len(base) < out_dim:
            raise ValueError(f"pca projection needs at least {out_dim} base vectors, got {len(base)}")
        # Eigenvectors of the d×d second-moment matrix = right singular vectors of `base`, at a fraction of the cost.
        eigenvalues, eigenvectors = torch.linalg.eigh(base.T @ base)
        matrix = eigenvectors[:, torch.argsort(eigenvalues, descending=True)[:out_dim]].T.numpy().copy()
        matrix *= np.sign(matrix.sum(axis=1, keepdims=True) + 1e-12)  # fix the eigenvectors' sign ambiguity
    elif kind == "orthogonal":
        gaussian = np.random.default_rng(seed).standard_normal((in_dim, out_dim))
        q, r = np.linalg.qr(gaussian)
        matrix = (q * np.sign(np.diag(r))).T
    else:
        raise ValueError(f"sci.tower.init_projection must be 'pca' or 'orthogonal', got {kind!r}")
    return torch.tensor(matrix, dtype=torch.float32)


def tower_class(kind: str):
    """The dual-tower class of a `sci.tower.kind` (imported here: the other kinds build on this module)."""
    if kind == "mlp":
        return DualTower
    if kind == "minilm":
        from .text_tower import TextDualTower

        return TextDualTower
    if kind == "mlp_lexical":
        from .lexical_tower import LexicalDualTower

        return LexicalDualTower
    raise ValueError(f"unknown tower kind {kind!r}: expected mlp, minilm or mlp_lexical")


def saved_settings(folder: str | Path) -> tuple[type, dict]:
    """(tower class, its settings) of a sci_towers artifact `folder`'s towers.json."""
    settings = json.loads((Path(folder) / CONFIG_FILE).read_text())
    kind = settings.pop("kind", "mlp")  # towers saved before tower kinds existed are mlp towers
    try:
        return tower_class(kind), settings
    except ValueError as error:
        raise ValueError(f"{Path(folder) / CONFIG_FILE}: {error}") from None


def tower_files(folder: str | Path) -> list[str]:
    """The names of the files in a sci_towers artifact `folder` that `load_towers` reads."""
    return list(saved_settings(folder)[0].files)


def quantised_width(folder: str | Path) -> int | None:
    """How many leading columns of a sci_towers artifact's vectors the semantic IDs quantise
    (None: all of them); see `LexicalDualTower.quantised_width`."""
    tower_type, settings = saved_settings(folder)
    return tower_type.quantised_width(settings)


def load_towers(folder: str | Path):
    """The trained towers (DualTower, TextDualTower for kind minilm, LexicalDualTower for kind
    mlp_lexical) from a sci_towers artifact folder (eval mode, CPU)."""
    tower_type, settings = saved_settings(folder)
    towers = tower_type.untrained(Path(folder), settings)
    towers.load_state_dict(torch.load(Path(folder) / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return towers.eval()
