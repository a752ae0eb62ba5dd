"""The DDP check both trainers' tests run: the same command line under torchrun with 2 gloo
ranks and as one process, on the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sid_models.params import REPO_ROOT


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_ddp_matches_single_process(command: list[str], tmp_path: Path, timeout: int, steps: int | None = None) -> None:
    """`python <command> --out O` (the command passes --save-every-rank) under torchrun with two
    ranks and alone: the ranks end with identical parameters, equal to the single run's within
    float tolerance, and every step's loss matches (`steps` of them, when given)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = str(REPO_ROOT / ".venv" / "bin" / "torchrun")
    subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", *command, "--out", str(tmp_path / "ddp")],
                   check=True, cwd=REPO_ROOT, env=env, timeout=timeout)
    single_env = {key: value for key, value in env.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    subprocess.run([sys.executable, *command, "--out", str(tmp_path / "single")], check=True, cwd=REPO_ROOT,
                   env=single_env, timeout=timeout)
    rank0 = torch.load(tmp_path / "ddp" / "model_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "model_rank1.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "model_rank0.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], atol=1e-4, rtol=1e-3)
    ddp_losses, single_losses = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert len(ddp_losses) == len(single_losses) == (steps if steps is not None else len(single_losses)) > 0
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)
