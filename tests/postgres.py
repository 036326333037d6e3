"""A throwaway PostgreSQL 15 cluster for the live-server tests: `initdb` and `pg_ctl` in a temporary folder, on a
free loopback port, stopped and removed afterwards. No system service is used or needed."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

BIN_DIRS = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"]


def pg_bin(name: str) -> str | None:
    """The PostgreSQL program `name` (initdb, pg_ctl, createdb), from Debian's folder or PATH."""
    for folder in BIN_DIRS:
        if os.access(Path(folder) / name, os.X_OK):
            return str(Path(folder) / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    """initdb refuses to run as root: as root, run the cluster's programs as the `postgres` user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, check=True, capture_output=True, text=True, timeout=120, **kw)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PgCluster]:
    """A fresh cluster on 127.0.0.1:<free port>; yields it, then stops it and deletes its folder."""
    if not pg_bin("initdb"):
        raise RuntimeError("PostgreSQL's initdb is not installed: apt-get install -y postgresql (.ci/run does)")
    folder = Path(tempfile.mkdtemp(prefix="digitgen-pg-"))  # under /tmp: the postgres user must reach it
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    port = _free_port()
    cluster = PgCluster(folder, port)
    try:
        _as_postgres([pg_bin("initdb"), "-D", str(folder / "db"), "-A", "trust", "-U", "postgres", "--no-sync"])
        _as_postgres(
            [
                pg_bin("pg_ctl"),
                "-D",
                str(folder / "db"),
                "-l",
                str(folder / "postgres.log"),
                "-w",
                "-o",
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
                "start",
            ]
        )
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _as_postgres([pg_bin("pg_ctl"), "-D", str(folder / "db"), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


class PgCluster:
    """A running cluster: make databases on it and get their SQLAlchemy URLs."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port

    def create_database(self, name: str) -> str:
        """Create database `name`; return its asyncpg URL, as PREFECT_API_DATABASE_CONNECTION_URL takes it."""
        _as_postgres([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name])
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def query(self, database: str, sql: str) -> list[str]:
        """The first column of each row `sql` returns in `database` (psql, unaligned)."""
        done = _as_postgres(
            [
                pg_bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-tA",
                "-c",
                sql,
            ]
        )
        return done.stdout.split()
