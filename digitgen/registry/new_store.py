"""A new local SQLite store, copied from an empty one. MLflow makes a store by creating its first tables and running
every schema migration since (over 60), 1-1.5 s of each new output folder's first run (2-core AMD EPYC); a copy of
an empty store that MLflow made once per MLflow version on this machine takes milliseconds. MLflow then finds its
tables in place and adds its Default experiment as it does in a store it made (its artifacts under the working
directory's mlruns/, as always)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from digitgen.io import cache_dir, locked


def template_path() -> Path:
    """$XDG_CACHE_HOME/digitgen/mlflow-<version>-empty.db (~/.cache by default), beside the precision probe's cache."""
    import mlflow

    return cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def seed_from_template(uri: str) -> bool:
    """Put a copy of the machine's empty store where the SQLite store `uri` (a plain `sqlite:///` file, the caller
    holding its writing lock) does not exist yet, making the empty store first if need be. False, and nothing
    written, for any other store, where that cannot be done (no cache folder, or an MLflow without the function
    used), or where another process (`make mlflow`, which takes no lock) made the store meanwhile: MLflow then opens
    or makes the store itself."""
    db = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or "?" in uri or ":memory:" in uri or db.exists():
        return False
    try:
        template = _template()
    except Exception:  # noqa: BLE001 (any failure: the store is made the usual way)
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, partial)
        os.link(partial, db)  # never over a store made meanwhile: FileExistsError
        return True
    except OSError:
        return False
    finally:
        partial.unlink(missing_ok=True)


def _template() -> Path:
    path = template_path()
    with locked(path):  # the processes of one machine make it once
        if not _sound(path):  # missing, or damaged since: made again
            import sqlalchemy
            from mlflow.store.db.utils import _initialize_tables  # what SqlAlchemyStore runs on a new database

            partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
            try:
                _initialize_tables(engine)
                if not _sound(partial):
                    raise RuntimeError(f"the empty MLflow store made at {partial} does not check out")
                os.replace(partial, path)
            finally:
                engine.dispose()
                partial.unlink(missing_ok=True)
                Path(f"{partial}-journal").unlink(missing_ok=True)
    return path


def _sound(path: Path) -> bool:
    """The file is a whole SQLite database (its pages check out) with MLflow's schema revision recorded."""
    import sqlite3

    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("pragma quick_check").fetchone() == ("ok",) and bool(
                db.execute("select version_num from alembic_version").fetchone()
            )
    except sqlite3.Error:
        return False
