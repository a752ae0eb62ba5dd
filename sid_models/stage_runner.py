"""The one way a stage's artifact is written, for Dagster assets, the DVC command line and the benchmarks.

`write_stage(name, params, inputs, final)` runs the stage into `<final>.partial` (removed first
if a killed run left one) and puts it in place only when the stage succeeded: a failed stage
leaves no artifact behind, and a stage killed at any moment leaves the previous output as it
was. The new folder replaces an existing one by an atomic exchange (Linux `renameat2` with
`RENAME_EXCHANGE`), so no reader ever finds neither; where the filesystem cannot exchange, the
old folder is moved aside first and removed after.

`close_orphan_runs(client, experiment_id, stage)` marks KILLED the MLflow runs of `stage`
left RUNNING by a process of this host that no longer exists (a stage killed mid-run); the
tags `PID_TAG` / `HOST_TAG` that `run_tags()` returns identify them.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

from . import tracking
from .stages import STAGES, run_stage

PID_TAG, HOST_TAG = "sidr.pid", "sidr.host"
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the kernel or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, f"exchanging {a} and {b}: {os.strerror(code)}")


def replace_folder(staging: Path, final: Path) -> None:
    """Put `staging` at `final`, replacing what is there without a moment where `final` is absent."""
    if not final.exists():
        staging.rename(final)
        return
    if _exchange(staging, final):
        shutil.rmtree(staging)                   # now holds the previous output
        return
    aside = final.with_name(final.name + ".previous")
    shutil.rmtree(aside, ignore_errors=True)
    final.rename(aside)
    staging.rename(final)
    shutil.rmtree(aside)


def write_stage(name: str, params: dict, inputs: dict[str, Path], final: Path,
                runner: Callable[[str, dict, dict[str, Path], Path], dict[str, Any]] = run_stage) -> dict[str, Any]:
    """Run stage `name` into `final` (see module docstring); returns the stage's metadata.
    `runner(name, params, inputs, staging)` writes the stage into `staging`: `stages.run_stage`
    in this process, or a launcher that runs it elsewhere (orchestration/launch.py: torchrun)."""
    final = Path(final)
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    # every stage run carries the params.yaml sections it reads (all of them for a stage that
    # declares none), under "params." so they never clash with what the stage logs itself
    sections = STAGES[name].params
    tracking.log_params({section: params.get(section) for section in (params if sections is None else sections)},
                        prefix="params")
    try:
        metadata = runner(name, params, {key: Path(value) for key, value in inputs.items()}, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_folder(staging, final)
    return metadata


def run_tags() -> dict[str, str]:
    """Tags that let a later start recognise this process's MLflow run as orphaned if it dies."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_orphan_runs(client, experiment_id: str, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `stage` whose process (this host) is gone; returns their ids."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.stage = '{stage}' and attributes.status = 'RUNNING'")
    closed = []
    for run in runs:
        tags = run.data.tags
        if tags.get(HOST_TAG) != socket.gethostname() or PID_TAG not in tags:
            continue
        pid = int(tags[PID_TAG])
        if pid != os.getpid() and not _alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed
