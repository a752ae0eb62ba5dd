"""Real PostgreSQL and MLflow servers on loopback for the scale-out tests, started and stopped by them.

PostgreSQL comes from Debian's `postgresql` package (`.ci/run` installs it on a fresh
machine); the server refuses to run as root, so as root it runs as the package's `postgres`
user. Each server lives in its own temporary folder and is gone after the test.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from sid_models.serving.server import answers_ok, free_port

INSTALL_HINT = "install PostgreSQL's server (Debian: apt-get install postgresql) to run it"
ROLE = "sidr"


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def why_no_postgres() -> str | None:
    """None when a PostgreSQL server can be started here, else the reason (for pytest.skip)."""
    import importlib.util

    if importlib.util.find_spec("dagster_postgres") is None:
        return "dagster-postgres is not installed: `make setup` installs it (see the Makefile)"
    if postgres_bin() is None:
        return f"no PostgreSQL server binaries (initdb, pg_ctl): {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user for the server: " + INSTALL_HINT
    return None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_server(databases: tuple[str, ...]) -> Iterator[str]:
    """A fresh PostgreSQL cluster on 127.0.0.1 with `databases` created; yields the base URL
    `postgresql://sidr@127.0.0.1:<port>` (append `/<database>`). Trust authentication on
    loopback only: a test server, never a deployment."""
    reason = why_no_postgres()
    if reason:
        raise RuntimeError(reason)
    binaries = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="sidr-postgres-"))
    data = folder / "data"
    data.mkdir()
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        for path in (folder, data):
            os.chown(path, account.pw_uid, account.pw_gid)
    port = free_port()
    log = folder / "server.log"
    subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", ROLE, "--auth=trust",
                                    "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                                              "-w", "-t", "60", "start"]), capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log.read_text()[-2000:]}")
    base = f"postgresql://{ROLE}@127.0.0.1:{port}"
    try:
        import psycopg2

        connection = psycopg2.connect(f"{base}/postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in databases:
                cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        yield base
    finally:
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def query(url: str, sql: str) -> list[tuple]:
    """Rows of one SQL statement against the database at `url`."""
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        connection.close()


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, log_path: Path, start_timeout_s: float) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over `backend_store_uri`, serving artifacts from `artifacts`
    (clients reach them through the server, `mlflow-artifacts:/`); yields its http URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", str(artifacts), "--serve-artifacts", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + start_timeout_s
            while not answers_ok(f"{url}/health"):
                if process.poll() is not None:
                    raise RuntimeError(f"mlflow server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow server not up on {url} after {start_timeout_s} s; log: {log_path}")
                time.sleep(1.0)
            yield url
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

