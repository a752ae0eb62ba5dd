"""Start and stop the scoring server of a registered model (tests, benchmarks, smoke checks).

The server is `python -m sid_models.serving.app` (MLflow's scoring app behind the request
guard of `app.py`) on 127.0.0.1, in its own process group so stopping it ends its workers too.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

STOP_GRACE_S = 30
POLL_S = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_json(url: str, body: str | bytes, timeout: float,
              headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """(HTTP status, decoded JSON body) of a POST; error statuses are returned, not raised."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if headers is None
                                     else headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextlib.contextmanager
def scoring_server(model_uri: str, tracking_uri: str, start_timeout_s: float, log_path: str | Path,
                   port: int | None = None) -> Iterator[str]:
    """Serve `model_uri` on 127.0.0.1; yields the /invocations URL once /ping answers 200.

    Raises RuntimeError (with the log's tail) if the server exits, TimeoutError if it is not
    up within `start_timeout_s`. The server is stopped on exit (SIGTERM, then SIGKILL).
    """
    port = port or free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sid_models.serving.app", "-m", model_uri, "--host", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + start_timeout_s
            while not answers_ok(f"{base}/ping"):
                if process.poll() is not None:
                    raise RuntimeError(f"scoring server for {model_uri} exited with {process.returncode}: "
                                       f"{Path(log_path).read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"scoring server for {model_uri} not up on {base} after {start_timeout_s} s; "
                                       f"log: {log_path}")
                time.sleep(POLL_S)
            yield f"{base}/invocations"
        finally:
            _stop(process)


def answers_ok(url: str) -> bool:
    """Whether a GET of `url` answers 200 now (a server's health route while it starts)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_GRACE_S)
