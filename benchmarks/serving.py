"""Serving speed of the registered champion: in process (pyfunc predict) vs over HTTP (the guarded scoring server).

Serves `models:/<registry.model_name>@<registry.champion_alias>` from the tracking store
(`$MLFLOW_TRACKING_URI`, default mlflow/mlflow.db: run `make run` first). Queries are the
test-split queries of the dataset packaged inside the model, so the figures belong to the
data the champion was trained on (`dataset` in the output); `--data` is not used.

Systems: `in_process` (PyFuncModel.predict in this process) and `http` (POST /invocations
to a local scoring server, JSON encode/decode included). Per system: p50_ms / p95_ms over
single-query requests (batch 1) and qps over requests of `BATCH` queries, k = params
serving.default_k. `--quick` times fewer queries.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.common import emit, log, parse_args  # noqa: E402
from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.params import load_params  # noqa: E402
from sid_models.serving.server import post_json, scoring_server  # noqa: E402

BATCH = 64
LATENCY_QUERIES = {"quick": 20, "full": 200}
THROUGHPUT_BATCHES = {"quick": 2, "full": 10}


def timed(call, payloads) -> np.ndarray:
    call(payloads[0])  # warm-up, untimed
    seconds = []
    for payload in payloads:
        start = time.perf_counter()
        call(payload)
        seconds.append(time.perf_counter() - start)
    return np.array(seconds)


def figures(call, texts: list[str], n_latency: int, n_batches: int) -> dict:
    single = timed(call, [[text] for text in texts[:n_latency]]) * 1000.0
    batches = [[texts[(start + offset) % len(texts)] for offset in range(BATCH)]
               for start in range(0, n_batches * BATCH, BATCH)]
    batch_seconds = timed(call, batches)
    return {"p50_ms": float(np.percentile(single, 50)), "p95_ms": float(np.percentile(single, 95)),
            "qps": BATCH * len(batches) / float(batch_seconds.sum()), "batch": BATCH,
            "n_queries": len(single)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    mode = "quick" if args.quick else "full"
    params = load_params()
    registry, serving = params["registry"], params["serving"]
    from sid_models.tracking import tracking_uri as default_tracking_uri

    tracking_uri = default_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    model_uri = f"models:/{registry['model_name']}@{registry['champion_alias']}"
    log(f"loading {model_uri} from {tracking_uri}")
    model = mlflow.pyfunc.load_model(model_uri)
    prepared = PreparedDataset.load(model.unwrap_python_model().artifact("prepared_dataset"))
    texts = prepared.split_queries("test")["text"].astype(str).tolist()
    k = serving["default_k"]
    common = {"dataset": prepared.name, "model_uri": model_uri, "k": k}

    def in_process(queries):
        return model.predict(pd.DataFrame({"query": queries}), params={"k": k})

    log(f"in_process: {LATENCY_QUERIES[mode]} single queries, {THROUGHPUT_BATCHES[mode]} batches of {BATCH}")
    emit("serving", "in_process", **common, **figures(in_process, texts, LATENCY_QUERIES[mode], THROUGHPUT_BATCHES[mode]))

    with tempfile.TemporaryDirectory() as folder, \
            scoring_server(model_uri, tracking_uri, serving["server_start_timeout_s"], Path(folder) / "server.log") as url:
        def over_http(queries):
            status, body = post_json(url, json.dumps({"inputs": queries, "params": {"k": k}}),
                                     serving["request_timeout_s"])
            if status != 200:
                raise RuntimeError(f"scoring server answered {status}: {body}")
            return body

        log(f"http: {url}")
        emit("serving", "http", **common, **figures(over_http, texts, LATENCY_QUERIES[mode], THROUGHPUT_BATCHES[mode]))


if __name__ == "__main__":
    main()
