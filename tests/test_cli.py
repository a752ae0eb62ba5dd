"""The command lines refuse bad input with one clear line and exit status 2; --debug shows the traceback."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from sid_models import cli
from sid_models.data.schema import DataError
from sid_models.serving import cli as sidr


@pytest.fixture
def duplicate_item_dataset(tmp_path, small_params):
    folder = tmp_path / "store"
    folder.mkdir()
    pd.DataFrame({"item_id": ["a", "a"], "title": ["drill", "hammer"]}).to_parquet(folder / "items.parquet")
    pd.DataFrame({"query_id": ["q"], "text": ["drill"]}).to_parquet(folder / "queries.parquet")
    pd.DataFrame({"query_id": ["q"], "item_id": ["a"], "relevance": [3.0]}).to_parquet(folder / "judgments.parquet")
    (folder / "dataset.json").write_text(json.dumps(
        {"name": "dup", "scale": {"minimum": 1, "maximum": 3, "threshold": 2.5, "gain_offset": 1}}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**small_params, "dataset": {**small_params["dataset"], "kind": "parquet",
                                                                  "path": str(folder)}}))
    return params


def test_a_data_error_is_one_line_naming_the_file_and_exit_2(duplicate_item_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    status = cli.main(["run", "raw_dataset", "--out", str(tmp_path / "raw"), "--params", str(duplicate_item_dataset)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("python -m sid_models.cli: error:")]
    assert len(errors) == 1 and "items.parquet" in errors[0] and "row 2" in errors[0]
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.partial").exists()


def test_debug_shows_the_original_error(duplicate_item_dataset, tmp_path):
    with pytest.raises(DataError):
        cli.main(["run", "raw_dataset", "--out", str(tmp_path / "raw"), "--params", str(duplicate_item_dataset),
                  "--debug"])


def test_unknown_stage_lists_the_stages(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["run", "nosuch", "--out", "x"])
    assert stopped.value.code == 2
    assert "sft_checkpoint" in capsys.readouterr().err


def test_sidr_missing_params_file_is_one_line(tmp_path, capsys):
    status = sidr.main(["search", "drill", "--params", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "missing.yaml" in err
