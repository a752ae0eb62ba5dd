"""Start and stop MLflow's scoring server for a registered model (tests, benchmarks, smoke checks).

`mlflow models serve -m models:/<name>@champion --env-manager local` runs uvicorn from the
current environment, so the environment's bin folder must be on PATH; this module puts it
there. The server runs in its own process group so stopping it ends its workers too.
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


def post_json(url: str, body: str, timeout: float) -> tuple[int, dict]:
    """(HTTP status, decoded JSON body) of a POST; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
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
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + start_timeout_s
            while not _ready(base):
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


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
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
