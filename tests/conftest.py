"""Shrink everything: tiny data subsets, one epoch, CPU, outputs under tmp_path; never the network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _source() -> Path:
    env = os.environ.get("DIGITGEN_DATA_SOURCE")
    path = Path(env) if env else ROOT.parent / "shared" / "data" / "MNIST" / "raw"
    if not path.is_dir():
        pytest.exit(f"MNIST source {path} not found: set DIGITGEN_DATA_SOURCE to the folder with the .gz files", 2)
    return path


@pytest.fixture(scope="session")
def data_source() -> Path:
    """The read-only folder with the four official MNIST .gz files."""
    return _source()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, data_source) -> Path:
    """A data root with MNIST staged and extracted once per session."""
    from models.data import load_mnist, stage_source

    root = tmp_path_factory.mktemp("data")
    stage_source(data_source, root)
    load_mnist(root, download=True)
    return root


@pytest.fixture(scope="session")
def mnist(data_root):
    from models.data import load_mnist

    return load_mnist(data_root)


@pytest.fixture
def source_copy(tmp_path, data_source) -> Path:
    """A writable copy of the source folder, for tests that damage it."""
    dst = tmp_path / "source"
    shutil.copytree(data_source, dst)
    return dst


@pytest.fixture
def tiny(tmp_path, data_root) -> dict:
    """Flow parameters for a run that takes seconds."""
    return {
        "epochs": 1, "train_limit": 2000, "test_limit": 1000, "is_samples": 20, "batch_size": 128,
        "data_root": data_root, "data_source": None, "out": tmp_path / "artifacts", "device": "cpu",
        "progress": False,
    }  # fmt: skip


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite in a temp dir) for every test that needs the API."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(autouse=True)
def _keep_thread_settings():
    """Dask's nanny leaves OMP_NUM_THREADS=1 in this process's environment; child processes must not inherit it."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
