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

from digitgen.registry.locks import _flock


def template_path() -> Path:
    """$XDG_CACHE_HOME/digitgen/mlflow-<version>-empty.db (~/.cache by default), beside the precision probe's cache."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "digitgen"
    return cache / f"mlflow-{mlflow.__version__}-empty.db"


def seed_from_template(db: Path) -> bool:
    """Put a copy of the machine's empty store at `db` (a path that does not exist yet; the caller holds the store's
    writing lock), making the empty store first if need be. False, and nothing written at `db`, where that cannot be
    done (no cache folder, or an MLflow without the function used), or where another process (`make mlflow`, which
    takes no lock) made the store meanwhile: MLflow then opens or makes the store itself."""
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
    with _flock(path.with_name(path.name + ".lock")):  # the processes of one machine make it once
        if not _sound(path):  # missing, or damaged since: made again
            import sqlalchemy
            from mlflow.store.db.utils import _initialize_tables  # what SqlAlchemyStore runs on a new database

            partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            partial.unlink(missing_ok=True)
            engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
            try:
                _initialize_tables(engine)
                engine.dispose()
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
