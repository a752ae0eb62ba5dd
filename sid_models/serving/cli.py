"""`sidr search "query"`: ask the registered champion (or any alias/version) for the top items."""
from __future__ import annotations

import argparse
import json
import sys

from ..params import load_params
from ..tracking import tracking_uri



def main(argv: list[str] | None = None) -> int:
    from ..cli import user_errors

    return user_errors("sidr", _main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sidr", description="Query the registered sid-retrieval model.",
                                     epilog="--debug: show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="top-k items for one or more queries")
    search.add_argument("queries", nargs="+", help="query text(s)")
    search.add_argument("-k", type=int, default=None, help="items per query (default: params serving.default_k)")
    search.add_argument("--alias", default=None, help="registry alias (default: params registry.champion_alias)")
    search.add_argument("--version", default=None, help="registry version number instead of an alias")
    search.add_argument("--params", default=None, help="params file (default: params.yaml / $SIDR_PARAMS)")
    search.add_argument("--tracking-uri", default=tracking_uri(), help="default: $MLFLOW_TRACKING_URI or mlflow/mlflow.db")
    search.add_argument("--json", action="store_true", help="print one JSON object per query")
    args = parser.parse_args(argv)

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    params = load_params(args.params)
    registry = params["registry"]
    reference = args.version or args.alias or registry["champion_alias"]
    uri = f"models:/{registry['model_name']}{'/' if args.version else '@'}{reference}"
    mlflow.set_tracking_uri(args.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(uri)
        found = model.predict(pd.DataFrame({"query": args.queries}),
                              params={"k": args.k} if args.k is not None else None)
    except MlflowException as error:
        print(f"sidr: {uri} (tracking {args.tracking_uri}): {error.message}", file=sys.stderr)
        return 2
    for row in found.itertuples(index=False):
        if args.json:
            print(json.dumps({"query": row.query, "item_ids": list(row.item_ids), "scores": list(row.scores)}))
        else:
            print(f"# {row.query}")
            for rank, (item, score) in enumerate(zip(row.item_ids, row.scores), start=1):
                print(f"{rank}\t{item}\t{score:.4f}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
