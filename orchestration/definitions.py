"""Dagster Definitions: every asset module under orchestration/assets, resources, jobs, automation."""
from __future__ import annotations

import importlib
import pkgutil

import dagster as dg

from . import assets as assets_package
from sid_models.tracking import tracking_uri

from .resources import MlflowTracking, ParamsResource
from .schedules import schedules
from .sensors import sensors

ASSET_MODULES = [importlib.import_module(f"{assets_package.__name__}.{module.name}")
                 for module in pkgutil.iter_modules(assets_package.__path__)]

all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)

pipeline_job = dg.define_asset_job("pipeline", selection=dg.AssetSelection.all())

# $MLFLOW_TRACKING_URI (an `mlflow server` URL included) decides where runs and the registry live
RESOURCES = {"params": ParamsResource(), "mlflow_tracking": MlflowTracking(tracking_uri=tracking_uri())}

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[pipeline_job],
    schedules=schedules,
    sensors=sensors,
    resources=RESOURCES,
)


def resolved_pipeline_job() -> dg.JobDefinition:
    """The `pipeline` job, rebuilt by name in each step process of the multiprocess executor."""
    return defs.resolve_job_def("pipeline")
