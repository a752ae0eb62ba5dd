"""DVC: dvc.yaml mirrors the stage table, datasets are versioned, `dvc repro` runs the data stages.

These tests drive the real DVC CLI from its own tool environment (`make setup` installs it
in .tools/dvc; $SIDR_DVC overrides the path). Without it they fail: DVC is part of the project.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sid_models.cli import main as cli_main
from sid_models.cli import render_dvc_yaml
from sid_models.data.loaders import load_demo, load_parquet_layout, save_parquet_layout
from sid_models.data.schema import DataError
from sid_models.data.versioning import dataset_version
from sid_models.params import REPO_ROOT, deep_merge, load_params
from sid_models.stages import STAGES

DVC = Path(os.environ.get("SIDR_DVC", REPO_ROOT / ".tools" / "dvc" / "bin" / "dvc"))
TINY_DEMO = {"n_items": 150, "n_queries": 200, "n_categories": 4}


def _run(command: list[str], cwd: Path, env: dict | None = None) -> str:
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                               env={**os.environ, **(env or {})}, timeout=300)
    assert completed.returncode == 0, f"{' '.join(map(str, command))} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout


def _dvc(*args: str, cwd: Path, env: dict | None = None) -> str:
    assert DVC.is_file(), f"DVC CLI not found at {DVC}: run `make setup`"
    return _run([str(DVC), *args], cwd, env)


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _run(["git", "init", "-q"], path)
    _run(["git", "config", "user.email", "tests@sid-retrieval"], path)
    _run(["git", "config", "user.name", "tests"], path)
    _dvc("init", "-q", cwd=path)
    _dvc("config", "core.analytics", "false", cwd=path)
    return path


def test_dvc_yaml_is_in_sync_with_the_stage_table():
    expected = render_dvc_yaml(load_params(REPO_ROOT / "params.yaml"))
    assert (REPO_ROOT / "dvc.yaml").read_text() == expected, "dvc.yaml is stale: run `make dvc-yaml`"
    stages = yaml.safe_load(expected)["stages"]
    assert list(stages) == list(STAGES)
    assert stages["eval_report"]["metrics"] == [{"reports/metrics.json": {"cache": False}}]
    assert stages["prepared_dataset"]["params"] == ["split", "segments"]
    assert "data/stages/raw_dataset" in stages["prepared_dataset"]["deps"]


def test_dvc_yaml_tracks_a_dataset_path_from_params():
    params = deep_merge(load_params(REPO_ROOT / "params.yaml"),
                        {"dataset": {"kind": "home_depot", "path": "../shared/data/home_depot"}})
    raw = yaml.safe_load(render_dvc_yaml(params))["stages"]["raw_dataset"]
    assert "../shared/data/home_depot" in raw["deps"]


def test_repository_has_a_local_default_remote():
    config = (REPO_ROOT / ".dvc" / "config").read_text()
    assert "remote = local" in config and "url = ../.dvc_remote" in config


def test_dataset_change_is_a_new_dvc_version(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    remote = tmp_path / "remote"
    _dvc("remote", "add", "-d", "local", str(remote), cwd=repo)
    store = save_parquet_layout(load_demo({**load_params(REPO_ROOT / "params.yaml")["demo"], **TINY_DEMO}),
                                repo / "data" / "store")
    params = {"dataset": {"kind": "parquet", "path": "data/store"}}
    with pytest.raises(DataError, match="dvc add data/store"):
        dataset_version(params, root=repo)

    _dvc("add", "-q", "data/store", cwd=repo)
    first = dataset_version(params, root=repo)
    assert first.endswith(".dir")
    _dvc("push", "-q", cwd=repo)
    assert any(path.is_file() for path in remote.rglob("*"))
    _run(["git", "add", "data/store.dvc", "data/.gitignore", ".dvc/config"], repo)
    _run(["git", "commit", "-q", "-m", "dataset v1"], repo)

    items = pd.read_parquet(store / "items.parquet")
    items.loc[0, "title"] = "renamed product"
    items.to_parquet(store / "items.parquet", index=False)
    _dvc("add", "-q", "data/store", cwd=repo)
    second = dataset_version(params, root=repo)
    assert second != first

    # the first version comes back from the cache by its pointer
    _run(["git", "checkout", "-q", "HEAD", "--", "data/store.dvc"], repo)
    _dvc("checkout", "-q", "--force", "data/store", cwd=repo)
    assert dataset_version(params, root=repo) == first
    assert load_parquet_layout(store).items.loc[0, "title"] != "renamed product"


def test_dvc_repro_runs_the_data_stages_and_versions_the_demo_store(tmp_path, small_params):
    repo = _git_repo(tmp_path / "repo")
    shutil.copytree(REPO_ROOT / "sid_models", repo / "sid_models", ignore=shutil.ignore_patterns("__pycache__"))
    params = deep_merge(small_params, {"demo": TINY_DEMO})
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "dvc.yaml").write_text(render_dvc_yaml(params, python=sys.executable))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    _dvc("repro", "-q", "prepared_dataset", cwd=repo, env=env)
    prepared = repo / "data" / "stages" / "prepared_dataset"
    assert {path.name for path in prepared.iterdir()} == {"items.parquet", "queries.parquet", "judgments.parquet",
                                                          "segments.parquet", "meta.json"}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"raw_dataset", "prepared_dataset"}
    version = dataset_version(params, root=repo)
    assert version == lock["raw_dataset"]["outs"][0]["md5"]
    assert "Data and pipelines are up to date" in _dvc("status", "prepared_dataset", cwd=repo, env=env)

    changed = deep_merge(params, {"demo": {"seed": params["demo"]["seed"] + 1}})
    (repo / "params.yaml").write_text(yaml.safe_dump(changed))
    status = _dvc("status", "raw_dataset", cwd=repo, env=env)
    assert "changed deps" in status and "demo" in status


def test_stage_cli_leaves_nothing_behind_on_bad_input(tmp_path, small_params, monkeypatch):
    store = shutil.copytree(REPO_ROOT / "tests" / "fixtures" / "wands", tmp_path / "wands")
    (store / "product.csv").write_text((store / "product.csv").read_text().replace("driftwood accent mirror", " "))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(deep_merge(small_params, {"dataset": {"kind": "wands",
                                                                                 "path": str(store)}})))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "data" / "stages" / "raw_dataset"
    assert cli_main(["run", "raw_dataset", "--params", str(params_file), "--out", str(out)]) == 2
    assert not out.exists() and not out.with_name("raw_dataset.partial").exists()
    with pytest.raises(DataError, match="empty product_name") as error:
        cli_main(["run", "raw_dataset", "--params", str(params_file), "--out", str(out), "--debug"])
    assert (error.value.row, error.value.column) == (4, "product_name")
    assert not out.exists() and not out.with_name("raw_dataset.partial").exists()


def test_a_fresh_clone_has_no_stage_whose_code_or_params_changed():
    """dvc.lock matches the committed code and params: `dvc status` may miss the outputs a clone
    has not produced (and their downstream data deps), never a changed code folder or param."""
    import json

    status = json.loads(_dvc("status", "--json", cwd=REPO_ROOT) or "{}")
    stale = {}
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                continue
            for path, state in change.get("changed deps", {}).items():
                produced = path.startswith("data/stages/") or path.startswith("reports/")
                if not produced:
                    stale.setdefault(stage, []).append(f"{path}: {state}")
    assert not stale, f"dvc.lock is older than the code or params ({stale}): run `make repro` and commit dvc.lock"
