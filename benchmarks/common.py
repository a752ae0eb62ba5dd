"""Shared plumbing for benchmark scripts: arguments, the prepared dataset, JSON lines out."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sid_models.data.loaders import load_dataset  # noqa: E402
from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.data.split import prepare  # noqa: E402
from sid_models.params import REPO_ROOT, deep_merge, load_params  # noqa: E402

HOME_DEPOT = REPO_ROOT.parent / "shared" / "data" / "home_depot"
# One stage cache for every benchmark: a folder's key hashes what the stage reads, so the
# generative and alignment benchmarks share the upstream chain and the SFT model.
CHAIN_CACHE = REPO_ROOT / "artifacts" / "bench" / "chain"
# Sections read only by sft_checkpoint and the stages after it: left out of the key of a
# stage that does not declare its sections (everything upstream of sft_checkpoint).
DOWNSTREAM_SECTIONS = ("generative", "sft", "decode", "align")


def parse_args(description: str, own_arguments=None) -> argparse.Namespace:
    """The arguments every benchmark takes; `own_arguments(parser)` adds a script's own."""
    parser = argparse.ArgumentParser(description=description)
    if own_arguments is not None:
        own_arguments(parser)
    parser.add_argument("--data", default=str(HOME_DEPOT) if HOME_DEPOT.exists() else "demo",
                        help="Home Depot folder, or 'demo' for the built-in demo store")
    parser.add_argument("--quick", action="store_true", help="shrink the run to a few minutes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--overrides", default="{}",
                        help='JSON merged over params.yaml, e.g. \'{"acrq": {"anchor_segments": ["head", "torso"]}}\'')
    return parser.parse_args()


def benchmark_params(args: argparse.Namespace, overrides: dict | None = None) -> dict:
    """params.yaml, the dataset of --data, a script's own `overrides`, then the user's --overrides."""
    params = load_params()
    if args.data != "demo":
        # a real catalogue trains with the CPU preset's budget, not the demo store's
        params = deep_merge(params, {"dataset": {"kind": "home_depot", "path": args.data},
                                     "generative": {"preset": "cpu"}})
    params = deep_merge(params, overrides or {})
    return deep_merge(params, json.loads(getattr(args, "overrides", "{}")))


def prepared_dataset(params: dict) -> PreparedDataset:
    return prepare(load_dataset(params), params["split"], params["segments"])


def test_queries(prepared: PreparedDataset):
    """The test queries with at least one relevant item (the ones every quality figure is over)."""
    return judged_queries(prepared, "test")


def judged_queries(prepared: PreparedDataset, split: str):
    """The queries of `split` with at least one relevant item."""
    queries = prepared.split_queries(split)
    return queries[queries["query_id"].isin(set(prepared.relevant(split)["query_id"]))]


def test_metrics(prepared: PreparedDataset, queries, found: list[list[tuple[str, float]]]) -> dict:
    """The shared `evaluate` on the test split of per-query hit lists [(item_id, score), ...]
    returned for `queries` (a `test_queries` frame), in order."""
    return split_metrics(prepared, "test", queries, found)


def split_metrics(prepared: PreparedDataset, split: str, queries, found: list[list[tuple[str, float]]]) -> dict:
    """`test_metrics` on the judgments of `split` (`queries`: a `judged_queries(prepared, split)` frame)."""
    from sid_models.shared.metrics import evaluate

    rankings = {query: [item for item, _ in hits] for query, hits in zip(queries["query_id"], found)}
    return evaluate(rankings, prepared.split_judgments(split), prepared.scale,
                    dict(zip(prepared.segments["item_id"], prepared.segments["segment"])))


def add_bucket_pool_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket-pool", type=int, default=None,
                        help="decode.bucket_pool to score with (default: params); not part of any stage's cache key")


def bucket_pool(args: argparse.Namespace, params: dict) -> int:
    """--bucket-pool when given, else the params' decode.bucket_pool."""
    pool = getattr(args, "bucket_pool", None)
    return int(pool if pool is not None else params["decode"]["bucket_pool"])


def emit(bench: str, system: str, **fields) -> None:
    """One JSON object per line on stdout; logs belong on stderr."""
    print(json.dumps({"bench": bench, "system": system, **fields}), flush=True)


def emit_summary(bench: str, results: dict[str, list[dict]], keys: tuple[str, ...]) -> None:
    """One summary line per system: `<key>_mean` and `<key>_std` (sample standard deviation over
    the seeds, 0 for one seed) of each of `keys` its per-seed rows carry."""
    import numpy as np

    for system, runs in results.items():
        figures = {}
        for key in keys:
            values = [run[key] for run in runs if key in run]
            if values:
                figures[f"{key}_mean"] = round(float(np.mean(values)), 4)
                figures[f"{key}_std"] = round(float(np.std(values, ddof=1 if len(values) > 1 else 0)), 4)
        emit(bench, system, summary=True, n_seeds=len(runs), **figures)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stage_key(name: str, params: dict, keys: dict[str, str]) -> str:
    """Hash of the params sections a stage reads and of its inputs' keys. A stage that does not
    declare its sections is hashed over all of them except DOWNSTREAM_SECTIONS."""
    import hashlib
    import json

    from sid_models.stages import STAGES

    sections = STAGES[name].params
    read = ({key: value for key, value in params.items() if key not in DOWNSTREAM_SECTIONS} if sections is None
            else {section: params.get(section) for section in sections})
    payload = json.dumps({"params": read, "upstream": [keys[up] for up in STAGES[name].upstream]}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_chain(params: dict, quick: bool, targets: tuple[str, ...], bench: str, build: bool = True) -> dict[str, Path]:
    """Run (or reuse) every stage `targets` need, each cached as CHAIN_CACHE/<quick|full>/<stage>-<key>;
    a stage is written by `stage_runner.write_stage`, so a cached folder is complete.
    `build=False`: reuse only, and raise for a stage that is not cached."""
    import time

    from sid_models.stage_runner import write_stage
    from sid_models.stages import STAGES

    needed, stack = set(), list(targets)
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(STAGES[name].upstream)
    work = CHAIN_CACHE / ("quick" if quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    folders: dict[str, Path] = {}
    keys: dict[str, str] = {}
    for name in (name for name in STAGES if name in needed):
        keys[name] = stage_key(name, params, keys)
        final = work / f"{name}-{keys[name]}"
        if final.is_dir():
            log(f"[{bench}] stage {name}: reusing {final}")
        elif not build:
            raise FileNotFoundError(f"stage {name} is not cached at {final}: run the benchmark that builds it first")
        else:
            log(f"[{bench}] stage {name} ...")
            started = time.perf_counter()
            write_stage(name, params, {up: folders[up] for up in STAGES[name].upstream}, final)
            log(f"[{bench}] stage {name} done in {time.perf_counter() - started:.0f} s")
        folders[name] = final
    return folders
