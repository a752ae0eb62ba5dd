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


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=str(HOME_DEPOT) if HOME_DEPOT.exists() else "demo",
                        help="Home Depot folder, or 'demo' for the built-in demo store")
    parser.add_argument("--quick", action="store_true", help="shrink the run to a few minutes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    return parser.parse_args()


def benchmark_params(args: argparse.Namespace, overrides: dict | None = None) -> dict:
    params = load_params()
    if args.data != "demo":
        params = deep_merge(params, {"dataset": {"kind": "home_depot", "path": args.data}})
    return deep_merge(params, overrides or {})


def prepared_dataset(params: dict) -> PreparedDataset:
    return prepare(load_dataset(params), params["split"], params["segments"])


def emit(bench: str, system: str, **fields) -> None:
    """One JSON object per line on stdout; logs belong on stderr."""
    print(json.dumps({"bench": bench, "system": system, **fields}), flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
