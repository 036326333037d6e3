"""A team's MLflow for the tests: `mlflow server` on a PostgreSQL database of the throwaway cluster (tests/postgres.py),
with proxied artifact storage (--artifacts-destination), on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from pathlib import Path

from live_server import BIN, _free_port, _start, _stop, _wait


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(tmp: Path, backend_uri: str, port: int | None = None):
    """`mlflow server` on `backend_uri` (postgresql://...), artifacts proxied into tmp/artifacts; yields its URL."""
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = _start(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
         str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env, tmp / f"mlflow-{port}.log",
    )  # fmt: skip
    try:
        _wait(lambda: healthy(url) or proc.poll() is not None, 180, "the MLflow server", tmp / f"mlflow-{port}.log")
        assert proc.poll() is None, (tmp / f"mlflow-{port}.log").read_text()[-3000:]
        yield url
    finally:
        _stop(proc)


def pg_backend(pg, name: str) -> str:
    """A new database on the cluster, as the postgresql+psycopg2:// URI `mlflow server` takes."""
    return pg.create_database(name).replace("postgresql+asyncpg://", "postgresql+psycopg2://")
