"""`sidr search "query"`: ask the registered champion (or any alias/version) for the top items.

Each result prints as rank, score, SID, popularity segment and title (`--json`: one object per
query with the same fields, for scripts). Loading the model takes seconds; `sidr search`
without query arguments keeps it loaded and answers each line typed on standard input, in
well under a second.

No confident match: a query none of whose results shares a word (stemmed, as BM25 reads it)
or at least CONFIDENT_TRIGRAMS of its character trigrams with the result's title is flagged
"no confident match" (`"confident": false`): the ranker always returns k items, and for
"zzzz qqq" they are guesses, however high their scores.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..params import load_params
from ..tracking import tracking_uri

CONFIDENT_TRIGRAMS = 0.25
HTTP_TIMEOUT_S = 10          # per request to a remote tracking server (MLflow's default retries for minutes)


def main(argv: list[str] | None = None) -> int:
    from ..cli import user_errors

    return user_errors("sidr", _main, argv)


class Catalogue:
    """Titles, SIDs and segments of the served model's items, from its own artifacts."""

    def __init__(self, model):
        import re

        from ..data.schema import PreparedDataset
        from ..quantize.table import load_sid_table
        from ..lexical.bm25 import snowball_stemmer

        searcher = model.unwrap_python_model()
        prepared = PreparedDataset.load(searcher.artifact("prepared_dataset"))
        self.titles = dict(zip(prepared.items["item_id"], prepared.items["title"].astype(str)))
        self.segments = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
        self.sids: dict[str, str] = {}
        if "semantic_ids" in searcher.artifacts:
            table = load_sid_table(searcher.artifact("semantic_ids"))
            self.sids = {item: "-".join(map(str, sid)) for item, sid in zip(table["item_id"], table["sid"])}
        self.words = re.compile(r"\w+")
        self.stem = snowball_stemmer("english").stemWords

    def terms(self, text: str) -> set[str]:
        return {term for term in self.stem(self.words.findall(text.lower())) if len(term) > 1}

    def confident(self, query: str, item_ids: list[str]) -> bool:
        from ..ranking.features import trigrams

        query_terms, query_grams = self.terms(query), trigrams(query)
        for item in item_ids:
            title = self.titles.get(item, "")
            grams = trigrams(title)
            if query_terms & self.terms(title):
                return True
            if query_grams and len(query_grams & grams) / len(query_grams) >= CONFIDENT_TRIGRAMS:
                return True
        return False

    def rows(self, query: str, item_ids: list[str], scores: list[float]) -> dict:
        return {"query": query, "confident": self.confident(query, item_ids),
                "results": [{"rank": rank, "item_id": item, "score": round(float(score), 4),
                             "sid": self.sids.get(item), "segment": self.segments.get(item),
                             "title": self.titles.get(item)}
                            for rank, (item, score) in enumerate(zip(item_ids, scores), start=1)]}


def check_store(uri: str) -> None:
    """Refuse a SQLite store that does not exist (MLflow would create an empty one and report
    "no model"), and bound how long an unreachable tracking server is waited for."""
    import os
    from pathlib import Path

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: run `make run` first, or pass "
                                f"--tracking-uri")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")


def print_answer(answer: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer, ensure_ascii=False), flush=True)
        return
    flag = "" if answer["confident"] else "   (no confident match: no result shares a word with the query)"
    print(f"# {answer['query']}{flag}")
    for result in answer["results"]:
        print(f"{result['rank']:>3}  {result['score']:8.4f}  {result['sid'] or '-':<14} {result['segment'] or '-':<6} "
              f"{result['title'] or result['item_id']}")
    print(flush=True)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["page"]:
        from .page import _main as page

        return page(argv[1:])
    parser = argparse.ArgumentParser(prog="sidr", description="Query the registered sid-retrieval model.",
                                     epilog="--debug: show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("page", help="a local search page: the champion beside BM25 (sidr page --help)")
    search = commands.add_parser("search", help="top-k items for one or more queries",
                                 description="Without queries: read one query per line from standard input and "
                                             "answer each with the model kept loaded.")
    search.add_argument("queries", nargs="*", help="query text(s); none = one per line from standard input")
    search.add_argument("-k", type=int, default=None, help="items per query (default: params serving.default_k)")
    search.add_argument("--alias", default=None, help="registry alias (default: params registry.champion_alias)")
    search.add_argument("--version", default=None, help="registry version number instead of an alias")
    search.add_argument("--params", default=None, help="params file (default: params.yaml / $SIDR_PARAMS)")
    search.add_argument("--tracking-uri", default=tracking_uri(), help="default: $MLFLOW_TRACKING_URI or mlflow/mlflow.db")
    search.add_argument("--json", action="store_true", help="print one JSON object per query")
    args = parser.parse_args(argv)
    for position, query in enumerate(args.queries, start=1):
        if not query.isprintable() and any(0xDC80 <= ord(char) <= 0xDCFF for char in query):
            # the shell passed bytes that are not UTF-8 (Python keeps them as lone surrogates)
            raise ValueError(f"query {position} is not UTF-8 text: {query.encode('utf-8', 'replace')[:40]!r}")

    check_store(args.tracking_uri)
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
    except MlflowException as error:
        print(f"sidr: {uri} (tracking {args.tracking_uri}): {error.message}", file=sys.stderr)
        return 2
    catalogue = Catalogue(model)

    def answer(queries: list[str]) -> int:
        try:
            found = model.predict(pd.DataFrame({"query": queries}), params={"k": args.k} if args.k is not None else None)
        except MlflowException as error:
            print(f"sidr: {error.message}", file=sys.stderr)
            return 2
        for row in found.itertuples(index=False):
            print_answer(catalogue.rows(row.query, list(row.item_ids), list(row.scores)), args.json)
        return 0

    if args.queries:
        return answer(args.queries)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"sidr: {uri} loaded; type a query per line, Ctrl-D to end", file=sys.stderr)
    code = 0
    for line in sys.stdin:
        if line.strip():
            code = max(code, answer([line.strip()]))
    return code


if __name__ == "__main__":
    sys.exit(main())
