"""Access to params.yaml, the single source of hyperparameters."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

PARAMS_ENV = "SIDR_PARAMS"
REPO_ROOT = Path(__file__).resolve().parent.parent


def params_path() -> Path:
    """`$SIDR_PARAMS` if set, else params.yaml at the repository root."""
    return Path(os.environ.get(PARAMS_ENV, REPO_ROOT / "params.yaml"))


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read params.yaml and deep-merge `overrides` (nested dicts) on top of it."""
    path = Path(path) if path is not None else params_path()
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with path.open() as handle:
        params = yaml.safe_load(handle)
    if not isinstance(params, dict):
        raise ValueError(f"params file {path} must hold a mapping at top level, got {type(params).__name__}")
    return deep_merge(params, overrides or {})


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
