"""The scoring server: MLflow's FastAPI scoring app behind a guard that refuses what the model cannot answer.

MLflow's own app converts a JSON body to a DataFrame before the model sees it, so
`{"inputs": [null, 123, true]}` reaches the model as the strings "None", "123", "True"; it
reads any body whole before refusing it, echoes over-long input in its error, and answers
500 to a request without a Content-Type. The guard (an ASGI middleware in front of the app)
answers each of those with a 4xx and a short message, before MLflow parses anything:

- a body over `serving.max_request_bytes` → 413, from Content-Length when the client sends
  it, otherwise by counting the bytes as they arrive (never buffered past the limit);
- no Content-Type, or one the model does not take → 415;
- a JSON body: every query, in each of MLflow's input formats (`inputs`, `instances`,
  `dataframe_split`, `dataframe_records`), must be a non-empty string of at most
  `serving.max_query_chars` characters, at most `serving.max_batch` of them, and queries × k
  at most `serving.max_results` → 400 naming the row and quoting at most QUOTED_CHARS of the
  value.

Everything else (CSV bodies, k's own checks, the model's errors) is MLflow's and the model's,
which answer 400 through `MlflowException`. Run it with
`python -m sid_models.serving.app -m models:/sid-retrieval@champion -p 5000`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .pyfunc import QUOTED_CHARS, ServingLimits, parse_request

INVOCATIONS = "/invocations"
ACCEPTED_TYPES = ("application/json", "text/csv", "application/x-parquet")


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def quote(value: Any) -> str:
    """repr of `value`, cut to QUOTED_CHARS characters: an error never echoes a whole input."""
    text = repr(value)
    return text if len(text) <= QUOTED_CHARS else f"{text[:QUOTED_CHARS]}... ({len(text)} characters)"


def json_queries(payload: Any) -> tuple[list[Any], Any]:
    """(query values, k or None) of a JSON request in any of MLflow's input formats."""
    if not isinstance(payload, dict):
        raise Refused(400, f"the JSON body must be an object with one of 'inputs', 'instances', 'dataframe_split', "
                           f"'dataframe_records'; got {type(payload).__name__}")
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise Refused(400, f"'params' must be an object, got {quote(params)}")
    formats = [key for key in ("inputs", "instances", "dataframe_split", "dataframe_records") if key in payload]
    if len(formats) != 1:
        raise Refused(400, f"the JSON body needs exactly one of the input fields 'inputs', 'instances', "
                           f"'dataframe_split', 'dataframe_records'; got {sorted(payload)}")
    data = payload[formats[0]]
    if formats[0] == "dataframe_split":
        if not isinstance(data, dict) or data.get("columns") != ["query"] or not isinstance(data.get("data"), list):
            raise Refused(400, "dataframe_split must be {\"columns\": [\"query\"], \"data\": [[query], ...]}")
        rows = data["data"]
        if any(not isinstance(row, list) or len(row) != 1 for row in rows):
            raise Refused(400, "every row of dataframe_split.data must be a list of one query")
        queries = [row[0] for row in rows]
    elif formats[0] == "dataframe_records":
        if not isinstance(data, list) or any(not isinstance(row, dict) or list(row) != ["query"] for row in data):
            raise Refused(400, "dataframe_records must be a list of {\"query\": ...} objects")
        queries = [row["query"] for row in data]
    elif isinstance(data, dict):
        if list(data) != ["query"] or not isinstance(data["query"], list):
            raise Refused(400, f"{formats[0]} as an object must be {{\"query\": [queries]}}; got keys {sorted(data)}")
        queries = data["query"]
    elif isinstance(data, list):
        queries = data
    else:
        raise Refused(400, f"{formats[0]} must be a list of query strings, got {quote(data)}")
    return queries, params.get("k")


def check_queries(queries: list[Any], k: Any, limits: ServingLimits) -> None:
    """The model's own request rules (`pyfunc.parse_request`), applied to the raw JSON values
    before MLflow turns them into strings."""
    from mlflow.exceptions import MlflowException

    try:
        parse_request(queries, k, limits)
    except MlflowException as error:
        raise Refused(400, error.message) from None


class RequestGuard:
    """ASGI middleware: checks POST /invocations (size, type, JSON queries) before `app` reads it."""

    def __init__(self, app, limits: ServingLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != INVOCATIONS or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        try:
            body = await self._checked_body(scope, receive)
        except Refused as refused:
            return await _answer(send, refused.status, refused.message)
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _checked_body(self, scope, receive) -> bytes:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_request_bytes):
            raise Refused(413, f"the request body has {declared} bytes; at most {self.limits.max_request_bytes} "
                               f"allowed")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type:
            raise Refused(415, f"the request has no Content-Type; send one of {', '.join(ACCEPTED_TYPES)}")
        if content_type not in ACCEPTED_TYPES:
            raise Refused(415, f"Content-Type {quote(content_type)} is not accepted; send one of "
                               f"{', '.join(ACCEPTED_TYPES)}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refused(400, "the client closed the connection before the body ended")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_request_bytes:
                raise Refused(413, f"the request body exceeds {self.limits.max_request_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if content_type == "application/json":
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise Refused(400, f"the body is not valid JSON (UTF-8): {error.__class__.__name__} at position "
                                   f"{getattr(error, 'pos', getattr(error, 'start', '?'))}") from None
            queries, k = json_queries(payload)
            check_queries(queries, k, self.limits)
        return body


async def _answer(send, status: int, message: str) -> None:
    body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE" if status == 400 else "BAD_REQUEST",
                       "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build_app(model_uri: str):
    """The guarded scoring app of the pyfunc model at `model_uri` (limits from its model config)."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri)
    limits = ServingLimits(**model.model_config["limits"])
    return RequestGuard(scoring_server.init(model), limits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a registered sid-retrieval model over HTTP (POST /invocations)")
    parser.add_argument("-m", "--model-uri", required=True, help="e.g. models:/sid-retrieval@champion")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(build_app(args.model_uri), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
