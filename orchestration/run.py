"""`make run`: materialise the whole asset graph once, in process, against the persistent DAGSTER_HOME."""
from __future__ import annotations

import sys

import dagster as dg

from .definitions import defs


def main() -> int:
    with dg.DagsterInstance.get() as instance:
        result = defs.get_job_def("pipeline").execute_in_process(instance=instance)
    for event in result.get_asset_materialization_events():
        print(f"materialised {event.asset_key.to_user_string()}", file=sys.stderr)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
