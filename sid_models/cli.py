"""Command line for DVC and scripts: run one pipeline stage, generate dvc.yaml, print the dataset version.

    python -m sid_models.cli run STAGE --out data/stages/STAGE   # what each dvc.yaml stage calls
    python -m sid_models.cli dvc-yaml > dvc.yaml                  # dvc.yaml from sid_models.stages.STAGES
    python -m sid_models.cli dataset-version                      # DVC hash of the tracked dataset

`run` reads upstream artifacts from `<stages-root>/<upstream>` (data/stages by default), writes
into `<out>.partial` and renames it to `<out>` only when the stage succeeded, inside an
MLflow run (tracking URI from $MLFLOW_TRACKING_URI, default the repository's
mlflow/mlflow.db with artifacts under mlflow/artifacts: `tracking.DEFAULT_TRACKING_URI`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import mlflow

from . import tracking
from .params import load_params
from .stage_runner import close_orphan_runs, run_tags, write_stage
from .stages import STAGES, Stage

STAGES_ROOT = Path("data") / "stages"
DEFAULT_PYTHON = ".venv/bin/python"
# Files a stage writes into its folder that DVC shows with `dvc metrics show`, copied to
# reports/ because a DVC metrics file cannot sit inside another output's folder.
PUBLISHED_METRICS = {"segment_stats": ("segment_stats.json", Path("reports") / "segment_stats.json"),
                     "eval_report": ("metrics.json", Path("reports") / "metrics.json")}


def run(stage: str, out: Path, stages_root: Path, params_file: Path | None) -> dict:
    if stage not in STAGES:
        raise SystemExit(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    params = load_params(params_file)
    inputs = {upstream: stages_root / upstream for upstream in STAGES[stage].upstream}
    missing = [str(path) for path in inputs.values() if not path.is_dir()]
    if missing:
        raise SystemExit(f"stage {stage!r} needs upstream artifacts that are missing: {', '.join(missing)}")
    experiment_id = _mlflow_experiment()
    close_orphan_runs(mlflow.MlflowClient(), experiment_id, stage)
    with mlflow.start_run(run_name=stage, tags={"stage": stage, "runner": "dvc", **run_tags()}):
        tracking.log_params({"stage": stage, "artifact_path": str(out)})
        metadata = write_stage(stage, params, inputs, out)
        tracking.log_metrics({key: value for key, value in metadata.items()
                              if isinstance(value, (int, float)) and not isinstance(value, bool)})
    publish_metrics(stage, out, PUBLISHED_METRICS[stage][1].parent if stage in PUBLISHED_METRICS else None)
    return metadata


def publish_metrics(stage: str, out: Path, folder: Path | None) -> None:
    """Copy the metrics file `stage` wrote into `out` (PUBLISHED_METRICS) into `folder`, where
    `dvc metrics show` reads it; nothing for a stage that publishes none."""
    if stage not in PUBLISHED_METRICS:
        return
    name = PUBLISHED_METRICS[stage][0]
    if not (out / name).is_file():
        raise FileNotFoundError(f"stage {stage!r} must write {name} into its folder {out}")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / name, folder / name)


def _mlflow_experiment() -> str:
    return tracking.setup_experiment(tracking.tracking_uri())


def render_dvc_yaml(params: dict, python: str = DEFAULT_PYTHON, stages_root: Path = STAGES_ROOT) -> str:
    """dvc.yaml text: one DVC stage per entry of STAGES, in pipeline order.

    The command passes `--params params.yaml` so a stage reads the very file DVC tracks
    (DVC runs it in the folder of dvc.yaml).

    deps: the code the stage runs (`Stage.code`: every sid_models component its module
    imports, directly or not), its upstream folders, and for raw_dataset the dataset
    path in params (an absolute path outside the repository is an external dependency DVC
    hashes on every status). params: the sections Stage.params names, or the whole
    params.yaml when it names none.
    """
    lines = ["# Generated from sid_models.stages.STAGES by `make dvc-yaml`; do not edit by hand.",
             "stages:"]
    for stage in STAGES.values():
        lines += [f"  {stage.name}:",
                  f"    cmd: {python} -m sid_models.cli run {stage.name} --params params.yaml "
                  f"--out {(stages_root / stage.name).as_posix()}",
                  "    deps:"]
        lines += [f"      - {dep}" for dep in _deps(stage, params, stages_root)]
        if stage.params is None:
            lines += ["    params:", "      - params.yaml:"]
        elif stage.params:
            lines += ["    params:"] + [f"      - {section}" for section in stage.params]
        lines += ["    outs:", f"      - {(stages_root / stage.name).as_posix()}"]
        if stage.name in PUBLISHED_METRICS:
            lines += ["    metrics:", f"      - {PUBLISHED_METRICS[stage.name][1].as_posix()}:",
                      "          cache: false"]
    return "\n".join(lines) + "\n"


def _deps(stage: Stage, params: dict, stages_root: Path) -> list[str]:
    deps = stage.code() + [(stages_root / upstream).as_posix() for upstream in stage.upstream]
    if stage.name == "raw_dataset" and params["dataset"]["kind"] != "demo" and params["dataset"].get("path"):
        deps.append(str(params["dataset"]["path"]))
    return deps


def user_errors(prog: str, command, argv: list[str] | None) -> int:
    """Run `command(argv)`; bad input (a DataError, a missing file, a refused value) prints one
    line `prog: error: ...` and exits 2. `--debug` anywhere in argv (or SIDR_DEBUG=1) shows the
    traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SIDR_DEBUG") == "1"
    argv = [argument for argument in argv if argument != "--debug"]
    try:
        return command(argv)
    except (ValueError, FileNotFoundError, KeyError, UnicodeError) as error:
        if debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"{prog}: error: {message} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return user_errors("python -m sid_models.cli", _main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sid_models.cli", description=__doc__.split("\n")[0],
                                     epilog="--debug: show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run one stage of sid_models.stages.STAGES",
                                     description="Run one pipeline stage. Stages, in pipeline order: "
                                                 + ", ".join(STAGES))
    run_parser.add_argument("stage", choices=list(STAGES), metavar="STAGE", help="one of: " + ", ".join(STAGES))
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--stages-root", type=Path, default=STAGES_ROOT)
    run_parser.add_argument("--params", type=Path, default=None, help="params file (default: $SIDR_PARAMS or params.yaml)")
    dvc_parser = commands.add_parser("dvc-yaml", help="print dvc.yaml generated from STAGES")
    dvc_parser.add_argument("--python", default=DEFAULT_PYTHON)
    dvc_parser.add_argument("--params", type=Path, default=None)
    version_parser = commands.add_parser("dataset-version", help="print the tracked dataset's DVC hash")
    version_parser.add_argument("--params", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "run":
        metadata = run(args.stage, args.out, args.stages_root, args.params)
        print(f"{args.stage}: wrote {args.out}", file=sys.stderr)
        for key, value in metadata.items():
            if not isinstance(value, dict):
                print(f"  {key}: {value}", file=sys.stderr)
    elif args.command == "dvc-yaml":
        sys.stdout.write(render_dvc_yaml(load_params(args.params), python=args.python))
    else:
        from .data.versioning import dataset_version

        print(dataset_version(load_params(args.params)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
