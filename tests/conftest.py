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


@pytest.fixture(scope="session")
def small_stage_folders(tmp_path_factory, small_params, small_prepared) -> dict[str, Path]:
    """The prepared_dataset and text_embeddings stage folders of the reduced demo store."""
    from sid_models.text.stage import run as text_stage

    root = tmp_path_factory.mktemp("small_stages")
    prepared = small_prepared.save(root / "prepared_dataset")
    embeddings = root / "text_embeddings"
    embeddings.mkdir()
    text_stage(small_params, {"prepared_dataset": prepared}, embeddings)
    return {"prepared_dataset": prepared, "text_embeddings": embeddings}
