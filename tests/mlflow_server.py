"""A team's MLflow for the tests: `mlflow server` on a PostgreSQL database of the throwaway cluster (tests/postgres.py),
with proxied artifact storage (--artifacts-destination), on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
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
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # as `make mlflow` starts it: no idle job consumers
    proc = _start(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env,
        tmp / f"mlflow-{port}.log",
    )
    try:
        _wait(lambda: healthy(url) or proc.poll() is not None, 180, "the MLflow server", tmp / f"mlflow-{port}.log")
        assert proc.poll() is None, (tmp / f"mlflow-{port}.log").read_text()[-3000:]
        yield url
    finally:
        _stop(proc)


def pg_backend(pg, name: str) -> str:
    """A new database on the cluster, as the postgresql+psycopg2:// URI `mlflow server` takes."""
    return pg.create_database(name).replace("postgresql+asyncpg://", "postgresql+psycopg2://")


class Switch:
    """A TCP forwarder on a loopback port to `target` (host, port) that can be switched off, so that its port refuses
    connections and the open ones break, as a server that went down, and on again. Lets a test take the suite's
    shared `mlflow server` "down" for one client without stopping it for everyone."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.port = target, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    def on(self) -> Switch:
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def off(self) -> None:
        for s in [self._listener, *self._open]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)
