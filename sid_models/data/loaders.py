"""Loaders from public formats into the canonical contract (see schema.py)."""
from __future__ import annotations

from .demo import generate_demo_store
from .schema import Dataset


def load_dataset(params: dict) -> Dataset:
    """The dataset params.yaml selects: `dataset.kind` and `dataset.path`."""
    kind = params["dataset"]["kind"]
    if kind == "demo":
        return generate_demo_store(**params["demo"])
    raise ValueError(f"unknown dataset.kind {kind!r}; expected one of: demo")
