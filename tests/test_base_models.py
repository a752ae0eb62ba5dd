"""Base text models: the all-mpnet-base-v2 parts assembly, the model table, and the shared vector cache."""
from __future__ import annotations

import hashlib
import io
import zipfile
from importlib import metadata

import numpy as np
import pytest

from sid_models.text.encoder import BASE_MODELS, MINILM, TextEncoder
from sid_models.text.mpnet import FOLDER, PARTS, REQUIRED, assemble
from sid_models.text.states import StateEncoder

MPNET = "sentence-transformers/all-mpnet-base-v2"


def split_zip(tmp_path, files: dict[str, bytes], n_pieces: int) -> list:
    """A zip of `files` under FOLDER/, cut into `n_pieces` files as the PyPI parts are."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(f"{FOLDER}/{name}", content)
    data = buffer.getvalue()
    cuts = np.linspace(0, len(data), n_pieces + 1).astype(int)
    pieces = []
    for number, (start, end) in enumerate(zip(cuts[:-1], cuts[1:]), start=1):
        piece = tmp_path / f"{FOLDER}.zip.{number:03d}"
        piece.write_bytes(data[start:end])
        pieces.append(piece)
    return pieces


def model_files() -> dict[str, bytes]:
    files = {name: f"{name} content".encode() for name in REQUIRED}
    files["model.safetensors"] = bytes(range(256)) * 64
    return files


def test_assemble_joins_the_pieces_and_checks_the_weights(tmp_path):
    files = model_files()
    pieces = split_zip(tmp_path, files, 3)
    target = tmp_path / "models" / FOLDER
    assemble(pieces, target, hashlib.sha256(files["model.safetensors"]).hexdigest())
    for name, content in files.items():
        assert (target / name).read_bytes() == content
    assert [path.name for path in target.parent.iterdir()] == [FOLDER]   # no scratch left beside it


def test_assemble_with_other_weights_leaves_nothing(tmp_path):
    pieces = split_zip(tmp_path, model_files(), 3)
    target = tmp_path / "models" / FOLDER
    with pytest.raises(ValueError, match="sha256"):
        assemble(pieces, target, "0" * 64)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_assemble_rejects_missing_files_and_missing_pieces(tmp_path):
    files = model_files()
    digest = hashlib.sha256(files["model.safetensors"]).hexdigest()
    target = tmp_path / "models" / FOLDER
    with pytest.raises(ValueError, match="modules.json"):
        assemble(split_zip(tmp_path, {k: v for k, v in files.items() if k != "modules.json"}, 2), target, digest)
    pieces = split_zip(tmp_path, files, 3)
    with pytest.raises(ValueError, match="do not join into a zip"):
        assemble(pieces[:2], target, digest)   # the last piece holds the zip's directory
    assert not target.exists()
    target.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="delete it"):
        assemble(pieces, target, digest)


def test_unknown_model_and_token_states_of_another_model_are_refused():
    with pytest.raises(KeyError, match="not a shipped model"):
        TextEncoder("sentence-transformers/all-MiniLM-L12-v2", None, 8, 64)
    with pytest.raises(ValueError, match="token states come from"):
        StateEncoder(MPNET, 3, 64, 8, None)


def parts_installed() -> bool:
    try:
        return all(metadata.distribution(name) for name in PARTS)
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not parts_installed(), reason="all-mpnet-base-v2 parts not installed (make mpnet)")
def test_mpnet_vectors_share_the_cache_with_minilm(tmp_path):
    texts = ["cordless drill 18 volt", "18v battery powered drill driver", "white ceramic floor tile"]
    vectors = {}
    for name in (MINILM, MPNET):
        encoder = TextEncoder(name, tmp_path, 8, 64, progress=False)
        vectors[name] = encoder.encode(texts)
        assert vectors[name].shape == (3, BASE_MODELS[name].width) and encoder.texts_encoded == 3
    mpnet = vectors[MPNET]
    np.testing.assert_allclose(np.linalg.norm(mpnet, axis=1), 1.0, atol=1e-5)
    assert mpnet[0] @ mpnet[1] > mpnet[0] @ mpnet[2] + 0.2
    for name in (MINILM, MPNET):   # each model reads its own shards from the one folder
        again = TextEncoder(name, tmp_path, 8, 64, progress=False)
        np.testing.assert_array_equal(again.encode(texts), vectors[name])
        assert again.model_calls == 0
