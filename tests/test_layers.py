"""The package's layering: a module imports only its own layer and those below it.

Lowest first: params and tracking; the dataset contract (`data`: schema, loaders and the
data stages every other stage reads); the shared components (`shared`: retrieval metrics,
the training loop and its distributed context) under every model stage; the evaluation stage
and serving on top.
Imports inside functions count as much as module-level ones.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from sid_models.stages import STAGES, imported_modules

PACKAGE = Path(__file__).resolve().parents[1] / "sid_models"
LAYERS = [
    {"params", "tracking", "artifacts"},
    {"data"},
    {"shared"},
    {"text"},
    {"lexical", "sci"},
    {"quantize"},
    {"generative"},
    {"ranking", "align"},
    {"eval"},
    {"serving", "stages", "stage_runner", "cli"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def component(module: str) -> str:
    """`sid_models.generative.trie` -> `generative`; `sid_models.params` -> `params`."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" or path.parent != PACKAGE)


def test_every_component_has_a_layer():
    components = {component(module_name(path)) for path in modules()}
    assert components == set(LAYER_OF), f"unlayered: {components - set(LAYER_OF)}; gone: {set(LAYER_OF) - components}"


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    own = component(module_name(path))
    upward = sorted(target for target in imported_modules(path.read_text(), module_name(path))
                    if LAYER_OF[component(target)] > LAYER_OF[own])
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {LAYER_OF[own]}, {own}) imports higher layers: {upward}"


def test_the_resolver_sees_relative_and_function_level_imports():
    """Guard of the test itself: every import form of an upward dependency is found."""
    source = ("from ..eval.harness import x\nfrom .index import FlatIndex\n\ndef f():\n"
              "    from sid_models.serving import app\n    import sid_models.cli\nfrom .. import generative\n")
    assert imported_modules(source, "sid_models.sci.probe") == {
        "sid_models.eval.harness", "sid_models.sci.index", "sid_models.serving", "sid_models.serving.app",
        "sid_models.cli",
        "sid_models.generative"}


def test_a_stage_depends_on_the_code_it_imports():
    """DVC reruns a stage when any code it runs changes: the SFT stage runs the shared training loop."""
    assert {"sid_models/generative", "sid_models/shared", "sid_models/data"} <= set(STAGES["sft_checkpoint"].code())
    assert "sid_models/generative" not in STAGES["text_embeddings"].code()
