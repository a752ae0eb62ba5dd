"""Training stages launched under `torchrun` through Dagster Pipes (params `launcher`).

`launcher.kind: in_process` (the default) runs every stage inside the asset's process.
`launcher.kind: torchrun` runs the stages named in `launcher.stages` (the SFT and alignment
checkpoints) as `torchrun --standalone --nproc-per-node N -m orchestration.pipes_stage ...`
under `dg.PipesSubprocessClient`: every rank trains (DDP, gloo on CPU, NCCL on GPUs), rank 0
validates, writes the artifact and talks to Dagster. What comes back:

- logs: rank 0's Pipes log lines, in the asset's Dagster log;
- per-step metrics: each training log step as a Pipes custom message, logged here to the
  stage's MLflow run with its step (one writer per run) and counted in the metadata;
- the result's metadata: the stage's metadata dict, reported by rank 0 as the asset
  materialisation's metadata, merged into the asset's output.

The artifact is written into the `.partial` folder `stage_runner.write_stage` hands over, so a
failed launch leaves no artifact behind, as in process.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from sid_models import tracking

KINDS = ("in_process", "torchrun")
STEP_MESSAGE = "training_step"


def launched(stage: str, params: dict) -> bool:
    """Whether `stage` runs under torchrun (params `launcher`) rather than in this process."""
    launcher = params["launcher"]
    if launcher["kind"] not in KINDS:
        raise ValueError(f"launcher.kind must be one of {KINDS}, got {launcher['kind']!r}")
    return launcher["kind"] == "torchrun" and stage in launcher["stages"]


def torchrun_command(stage: str, params_file: Path, inputs: dict[str, Path], out: Path, nproc: int) -> list[str]:
    if nproc < 1:
        raise ValueError(f"launcher.nproc_per_node must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "orchestration.pipes_stage", "--stage", stage, "--params", str(params_file),
            "--inputs", json.dumps({key: str(value) for key, value in inputs.items()}), "--out", str(out)]


def pipes_runner(context: dg.AssetExecutionContext):
    """A `write_stage` runner that launches the stage under torchrun through Pipes."""

    def run(stage: str, params: dict, inputs: dict[str, Path], staging: Path) -> dict[str, Any]:
        staging.mkdir(parents=True, exist_ok=True)
        params_file = staging.with_name(staging.name + ".params.yaml")
        params_file.write_text(yaml.safe_dump(params))
        launcher = params["launcher"]
        command = torchrun_command(stage, params_file, inputs, staging, int(launcher["nproc_per_node"]))
        context.log.info(f"{stage}: launching {' '.join(command[:6])} ... through Dagster Pipes")
        try:
            # one thread per rank unless the params say otherwise: N ranks share the machine's cores
            env = {**os.environ, "OMP_NUM_THREADS": str(launcher["threads_per_rank"])}
            invocation = dg.PipesSubprocessClient(env=env).run(context=context, command=command)
        finally:
            params_file.unlink(missing_ok=True)
        steps = [message for message in invocation.get_custom_messages()
                 if isinstance(message, dict) and message.get("kind") == STEP_MESSAGE]
        for message in steps:
            tracking.log_metrics(message["metrics"], step=message["step"])
        reported = invocation.get_materialize_result().metadata or {}
        metadata = {key: getattr(value, "value", value) for key, value in reported.items()}
        return {**metadata, "launcher": "torchrun", "launcher_ranks": int(launcher["nproc_per_node"]),
                "launcher_steps_reported": len(steps)}

    return run
