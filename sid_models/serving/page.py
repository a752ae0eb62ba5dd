"""A local search page: type a query, see the champion's results beside stemmed BM25's.

`sidr page` (or `python -m sid_models.serving.page`) loads the registered model once and
serves http://127.0.0.1:8000/?q=cordless+drill: for each system the rank, title, SID,
segment and score of its top k, the milliseconds it took, and the "no confident match"
flag of `sidr search` (see `cli.py`). BM25 runs over the catalogue the model carries, with
params `bm25`. Nothing leaves the machine: it listens on the loopback address.
"""
from __future__ import annotations

import argparse
import html
import sys
import time

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
form input[type=text] { width: 28rem; font-size: 1.1rem; padding: .3rem; }
.systems { display: flex; gap: 2rem; align-items: flex-start; }
.system { flex: 1; }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #ddd; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sid { font-family: monospace; color: #555; }
.warning { color: #a40; }
"""


class SearchPage:
    """The champion and BM25 over the champion's own catalogue; `render(query)` is the page."""

    def __init__(self, model, catalogue, bm25, k: int, model_uri: str):
        self.model, self.catalogue, self.bm25, self.k, self.model_uri = model, catalogue, bm25, k, model_uri

    def answers(self, query: str) -> list[tuple[str, dict, float]]:
        import pandas as pd

        started = time.perf_counter()
        found = self.model.predict(pd.DataFrame({"query": [query]}), params={"k": self.k}).iloc[0]
        champion_ms = 1000 * (time.perf_counter() - started)
        started = time.perf_counter()
        (bm25_found,) = self.bm25.search([query], self.k)
        bm25_ms = 1000 * (time.perf_counter() - started)
        return [(f"champion ({self.model_uri})",
                 self.catalogue.rows(query, list(found["item_ids"]), list(found["scores"])), champion_ms),
                ("BM25 (stemmed)", self.catalogue.rows(query, [item for item, _ in bm25_found],
                                                       [score for _, score in bm25_found]), bm25_ms)]

    def render(self, query: str) -> str:
        escaped = html.escape(query, quote=True)
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sid-retrieval search</title>"
                 f"<style>{STYLE}</style></head><body><h1>sid-retrieval</h1>"
                 f"<form method='get' action='/'><input type='text' name='q' value='{escaped}' autofocus "
                 f"placeholder='cordless drill'> <input type='submit' value='Search'></form>"]
        if query.strip():
            parts.append("<div class='systems'>")
            for name, answer, milliseconds in self.answers(query):
                parts.append(f"<div class='system'><h2>{html.escape(name)}</h2>"
                             f"<p class='latency'>{milliseconds:.0f} ms</p>")
                if not answer["confident"]:
                    parts.append("<p class='warning'>No confident match: no result shares a word with the query.</p>")
                parts.append("<table><tr><th>#</th><th>title</th><th>SID</th><th>segment</th><th>score</th></tr>")
                for result in answer["results"]:
                    parts.append(f"<tr class='result'><td class='num'>{result['rank']}</td>"
                                 f"<td>{html.escape(result['title'] or result['item_id'])}</td>"
                                 f"<td class='sid'>{html.escape(result['sid'] or '-')}</td>"
                                 f"<td>{html.escape(result['segment'] or '-')}</td>"
                                 f"<td class='num'>{result['score']:.3f}</td></tr>")
                parts.append("</table></div>")
            parts.append("</div>")
        parts.append("</body></html>")
        return "".join(parts)


def build_app(page: SearchPage):
    from fastapi import FastAPI, Query
    from fastapi.responses import HTMLResponse, PlainTextResponse
    from mlflow.exceptions import MlflowException

    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    def search(q: str = Query(default="")):
        try:
            return HTMLResponse(page.render(q))
        except MlflowException as error:     # a query the model refuses: say why, as the server does
            return PlainTextResponse(error.message, status_code=400)

    return app


def main(argv: list[str] | None = None) -> int:
    from ..cli import user_errors

    return user_errors("sidr page", _main, argv)


def _main(argv: list[str]) -> int:
    import mlflow

    from ..eval.systems import load_bm25
    from ..params import load_params
    from ..tracking import tracking_uri
    from .cli import Catalogue, check_store

    parser = argparse.ArgumentParser(prog="sidr page", description="A local search page: the champion beside BM25.")
    parser.add_argument("--alias", default=None, help="registry alias (default: params registry.champion_alias)")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml / $SIDR_PARAMS)")
    parser.add_argument("--tracking-uri", default=tracking_uri())
    parser.add_argument("-k", type=int, default=None, help="results per system (default: params serving.default_k)")
    parser.add_argument("-p", "--port", type=int, default=8000)
    args = parser.parse_args(argv)
    check_store(args.tracking_uri)
    params = load_params(args.params)
    uri = f"models:/{params['registry']['model_name']}@{args.alias or params['registry']['champion_alias']}"
    mlflow.set_tracking_uri(args.tracking_uri)
    model = mlflow.pyfunc.load_model(uri)
    catalogue = Catalogue(model)
    bm25 = load_bm25(model.unwrap_python_model().artifact("prepared_dataset"), params["bm25"])
    page = SearchPage(model, catalogue, bm25, args.k or int(params["serving"]["default_k"]), uri)
    import uvicorn

    print(f"search page on http://127.0.0.1:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(build_app(page), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
