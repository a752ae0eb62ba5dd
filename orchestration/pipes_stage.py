"""One pipeline stage run by every rank of a torchrun launch, reporting to Dagster through Pipes.

Launched by orchestration/launch.py; not meant to be called by hand (it expects the Pipes
environment Dagster's PipesSubprocessClient sets). Rank 0 opens the Pipes channel: its log
lines, each training log step (a custom message `{"kind": "training_step", "step", "metrics"}`)
and, at the end, the stage's metadata as the asset materialisation's metadata. The other ranks
train and stay silent.

  torchrun --standalone --nproc-per-node 2 -m orchestration.pipes_stage --stage sft_checkpoint \
      --params P --inputs '{"prepared_dataset": "...", ...}' --out O
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sid_models import tracking
from sid_models.params import load_params
from sid_models.stages import run_stage

from .launch import STEP_MESSAGE


def jsonable(metadata: dict) -> dict:
    return {key: value if isinstance(value, (bool, int, float, str)) or value is None else json.dumps(value)
            for key, value in metadata.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--params", required=True)
    parser.add_argument("--inputs", required=True, help="JSON: upstream stage -> folder")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    inputs = {key: Path(value) for key, value in json.loads(args.inputs).items()}
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank != 0:
        _run(args.stage, params, inputs, Path(args.out))
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        pipes.log.info(f"{args.stage}: rank 0 of {world} (torchrun), writing {args.out}")

        def forward(metrics: dict[str, float], step: int | None) -> None:
            if step is not None:
                pipes.report_custom_message({"kind": STEP_MESSAGE, "step": int(step), "metrics": metrics})

        tracking.METRIC_SINKS.append(forward)
        try:
            metadata = _run(args.stage, params, inputs, Path(args.out))
        finally:
            tracking.METRIC_SINKS.remove(forward)
        pipes.log.info(f"{args.stage}: done; {len(metadata)} metadata entries")
        pipes.report_asset_materialization(metadata=jsonable(metadata))


def _run(stage: str, params: dict, inputs: dict[str, Path], out: Path) -> dict:
    import torch.distributed as torch_dist

    try:
        return run_stage(stage, params, inputs, out)
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
