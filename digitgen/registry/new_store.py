"""A new local SQLite store, copied from an empty one. MLflow makes a store by creating its first tables and running
every schema migration since (over 60), 1-1.5 s of each new output folder's first run (2-core AMD EPYC); a copy of
an empty store that MLflow made once per MLflow version on this machine takes milliseconds. MLflow then finds its
tables in place and adds its Default experiment as it does in a store it made (its artifacts under the working
directory's mlruns/, as always)."""

from __future__ import annotations

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
    done (no cache folder, or an MLflow without the function used): MLflow then makes the store itself."""
    try:
        template = _template()
    except Exception:  # noqa: BLE001 (any failure: the store is made the usual way)
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, partial)
        os.replace(partial, db)
    except OSError:
        partial.unlink(missing_ok=True)
        return False
    return True


def _template() -> Path:
    path = template_path()
    with _flock(path.with_name(path.name + ".lock")):  # the processes of one machine make it once
        if not path.is_file():
            import sqlalchemy
            from mlflow.store.db.utils import _initialize_tables  # what SqlAlchemyStore runs on a new database

            partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
            try:
                _initialize_tables(engine)
                os.replace(partial, path)
            finally:
                engine.dispose()
                partial.unlink(missing_ok=True)
    return path
