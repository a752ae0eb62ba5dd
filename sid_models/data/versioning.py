"""The tracked dataset's version: its DVC hash, read from the files DVC writes (no DVC import).

Where the hash comes from, first match wins:

1. `dataset.path` has a pointer file `<path>.dvc` (the dataset was `dvc add`ed): the md5 of
   its output. `dvc add` rewrites the pointer whenever the data changes, so a change of data
   is a new version at once.
2. dvc.lock records `dataset.path` as a dependency of the `raw_dataset` stage (a path outside
   the repository, e.g. ../shared/data/home_depot): the md5 DVC computed at the last `dvc repro`.
3. dvc.lock's `raw_dataset` output (data/stages/raw_dataset, the canonical tables): the md5 of
   the dataset as last reproduced. This is the demo store's version (it is generated from
   params, so it changes when `demo` params change and `dvc repro` runs).

Directory hashes end in `.dir`, as DVC writes them. Nothing found raises a DataError saying
how to track the dataset.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..params import REPO_ROOT
from .schema import DataError

RAW_STAGE = "raw_dataset"
RAW_OUT = "data/stages/raw_dataset"


def dataset_version(params: dict, root: str | Path = REPO_ROOT) -> str:
    root = Path(root)
    raw_path = params["dataset"].get("path") if params["dataset"]["kind"] != "demo" else None
    if raw_path:
        path = Path(raw_path).expanduser()
        pointer = (path if path.is_absolute() else root / path).with_name(path.name + ".dvc")
        if pointer.is_file():
            return _pointer_md5(pointer)
    lock = root / "dvc.lock"
    stage = _lock_stage(lock) if lock.is_file() else None
    if stage is not None:
        if raw_path:
            for dep in stage.get("deps", []):
                if _same_path(dep["path"], raw_path, root):
                    return dep["md5"]
        for out in stage.get("outs", []):
            if out["path"] == RAW_OUT:
                return out["md5"]
    where = f"`dvc add {raw_path}`" if raw_path else "`dvc repro raw_dataset`"
    raise DataError(f"dataset is not tracked by DVC yet: run {where}", file=raw_path or lock)


def _pointer_md5(pointer: Path) -> str:
    content = yaml.safe_load(pointer.read_text())
    outs = (content or {}).get("outs") or []
    if not outs or "md5" not in outs[0]:
        raise DataError("DVC pointer has no output md5", file=pointer)
    return outs[0]["md5"]


def _lock_stage(lock: Path) -> dict | None:
    content = yaml.safe_load(lock.read_text()) or {}
    return (content.get("stages") or {}).get(RAW_STAGE)


def _same_path(recorded: str, configured: str, root: Path) -> bool:
    def resolve(value: str) -> Path:
        path = Path(value).expanduser()
        return (path if path.is_absolute() else root / path).resolve()

    return resolve(recorded) == resolve(configured)
