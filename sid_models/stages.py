"""The pipeline as a table of stages, shared by Dagster assets and DVC stages.

Each stage is one function `run(params, inputs, out) -> metadata`:
- `params`: the whole params.yaml as a dict;
- `inputs`: upstream stage name -> folder that stage wrote;
- `out`: an empty folder the stage writes its artifact into;
- returns a flat dict of JSON-able metadata (counts, metrics, health figures).
A stage raises on bad input before writing anything final. Dagster assets call these
functions with versioned folders; `python -m sid_models.cli run STAGE` calls them for DVC.
"""
from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str
    target: str               # "module:function"
    upstream: tuple[str, ...]
    # params.yaml sections the stage reads (DVC reruns it when one changes); None: the whole file
    params: tuple[str, ...] | None = None

    def function(self) -> Callable[[dict, dict[str, Path], Path], dict[str, Any]]:
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)

    def code(self) -> list[str]:
        """The repository paths of the code this stage runs: the component folders (or top-level
        modules) of every sid_models module its function's module reaches through imports."""
        reached = imported_closure(self.target.split(":")[0])
        root = PACKAGE.parent
        return sorted({(PACKAGE / module.split(".")[1]).relative_to(root).as_posix()
                       if (PACKAGE / module.split(".")[1]).is_dir()
                       else (PACKAGE / f"{module.split('.')[1]}.py").relative_to(root).as_posix()
                       for module in reached})


PACKAGE = Path(__file__).resolve().parent


def module_file(module: str) -> Path | None:
    """The source file of a sid_models module or package, None for a name inside a module."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: str, module: str) -> set[str]:
    """The sid_models modules (or packages) the source of `module` imports, relative imports
    resolved; imports inside functions count too."""
    package = module.split(".")[:-1]           # for an __init__ module too: its parts end in "__init__"
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            target = (".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                      if node.level else node.module or "")
            if target == "sid_models":            # `from .. import tracking` names modules
                found.update(f"sid_models.{alias.name}" for alias in node.names)
            elif target.startswith("sid_models."):
                found.add(target)
                # `from .data import schema` names a module too
                found.update(f"{target}.{alias.name}" for alias in node.names
                             if module_file(f"{target}.{alias.name}") is not None)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("sid_models."))
    return found


def imported_closure(module: str) -> set[str]:
    """`module` and every sid_models module it reaches through imports."""
    reached, stack = set(), [module]
    while stack:
        current = stack.pop()
        path = module_file(current)
        if current in reached or path is None:
            continue
        reached.add(current)
        name = current + ".__init__" if path.name == "__init__.py" else current
        stack.extend(imported_modules(path.read_text(), name))
    return reached


STAGES: dict[str, Stage] = {stage.name: stage for stage in [
    Stage("raw_dataset", "sid_models.data.stage:raw_dataset", (), params=("dataset", "demo")),
    Stage("prepared_dataset", "sid_models.data.stage:prepared_dataset", ("raw_dataset",),
          params=("split", "segments")),
    Stage("segment_stats", "sid_models.data.stage:segment_stats", ("prepared_dataset",), params=()),
    Stage("text_embeddings", "sid_models.text.stage:run", ("prepared_dataset",), params=("text",)),
    Stage("sci_towers", "sid_models.sci.stage:train_towers", ("prepared_dataset", "text_embeddings"),
          params=("seed", "sci", "text")),
    Stage("sci_index", "sid_models.sci.stage:build_index", ("prepared_dataset", "text_embeddings", "sci_towers"),
          params=("seed", "index")),
    Stage("acrq_codebooks", "sid_models.quantize.stage:fit_codebooks", ("prepared_dataset", "sci_towers", "sci_index"),
          params=("seed", "quantize", "acrq")),
    Stage("acrq_codes", "sid_models.quantize.stage:fit_tail_codes",
          ("prepared_dataset", "sci_towers", "sci_index", "acrq_codebooks"), params=("seed", "quantize", "acrq")),
    Stage("semantic_ids", "sid_models.quantize.stage:build_sids",
          ("prepared_dataset", "sci_towers", "sci_index", "acrq_codebooks", "acrq_codes"),
          params=("seed", "quantize", "acrq", "sarq", "semantic_ids")),
    Stage("sft_checkpoint", "sid_models.generative.stage:run",
          ("prepared_dataset", "sci_towers", "sci_index", "semantic_ids"),
          params=("seed", "generative", "sft", "decode", "text", "bm25", "sci")),
    Stage("ranker", "sid_models.ranking.stage:run",
          ("prepared_dataset", "text_embeddings", "sci_index", "semantic_ids", "sft_checkpoint"),
          params=("seed", "ranker", "bm25", "text")),
    Stage("dpo_checkpoint", "sid_models.align.stage:run",
          ("prepared_dataset", "sci_towers", "sci_index", "semantic_ids", "sft_checkpoint"),
          params=("align", "generative", "sft", "decode")),
    Stage("eval_report", "sid_models.eval.stage:run",
          ("prepared_dataset", "text_embeddings", "sci_towers", "sci_index", "semantic_ids",
           "sft_checkpoint", "ranker", "dpo_checkpoint")),
]}


def run_stage(name: str, params: dict, inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    stage = STAGES[name]
    missing = [upstream for upstream in stage.upstream if upstream not in inputs]
    if missing:
        raise ValueError(f"stage {name!r} needs inputs {missing}")
    out.mkdir(parents=True, exist_ok=True)
    return stage.function()(params, {key: Path(inputs[key]) for key in stage.upstream}, out)
