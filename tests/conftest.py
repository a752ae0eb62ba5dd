"""Shared fixtures: a reduced demo store and the real Home Depot data when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sid_models.data.loaders import load_dataset
from sid_models.data.split import prepare
from sid_models.params import REPO_ROOT, deep_merge, load_params

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

HOME_DEPOT = REPO_ROOT.parent / "shared" / "data" / "home_depot"

SMALL_DEMO = {"demo": {"n_items": 400, "n_queries": 600, "n_categories": 8}}


@pytest.fixture(scope="session")
def small_params() -> dict:
    """params.yaml with a reduced demo store; tests shrink other sections from here."""
    return deep_merge(load_params(), SMALL_DEMO)


@pytest.fixture(scope="session")
def small_prepared(small_params):
    return prepare(load_dataset(small_params), small_params["split"], small_params["segments"])


@pytest.fixture(scope="session")
def home_depot_path() -> Path:
    if not (HOME_DEPOT / "products.parquet").exists():
        pytest.skip(f"real data not present at {HOME_DEPOT}")
    return HOME_DEPOT
