"""Shrink everything: tiny data subsets, one epoch, CPU, outputs under tmp_path; never the network."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["harness", "live_server"]  # the Prefect API and threads of the suite's processes; the live server
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def temporary_folder(prefix: str) -> str:
    """A temporary folder removed when this process ends (a suite leaves nothing in the machine's /tmp)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# The suite's own Prefect home: test runs never appear in the user's database (.prefect/ under `make server`).
os.environ["PREFECT_HOME"] = temporary_folder("digitgen-test-prefect-")
# ...and its own cache: the precision probe's answers, measured on the suite's thread counts, stay out of the user's.
# One cache for the whole suite: pytest-xdist's workers inherit it from the process that started them (which removes
# it when it ends, after them), so a probe or the empty MLflow store is made once, not once per worker.
os.environ["XDG_CACHE_HOME"] = os.environ.get("DIGITGEN_SUITE_CACHE") or temporary_folder("digitgen-test-cache-")
os.environ["DIGITGEN_SUITE_CACHE"] = os.environ["XDG_CACHE_HOME"]
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)  # runs track into their own <out>/mlflow.db unless a test says otherwise
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _sources() -> Path:
    """The read-only root holding MNIST/raw and FashionMNIST/raw (torchvision's layout)."""
    env = os.environ.get("DIGITGEN_DATA_SOURCE")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    if path.name == "raw":  # an old-style setting: the MNIST folder itself
        path = path.parent.parent
    if not (path / "MNIST" / "raw").is_dir() or not (path / "FashionMNIST" / "raw").is_dir():
        pytest.exit(f"{path} has no MNIST/raw and FashionMNIST/raw: set DIGITGEN_DATA_SOURCE to ../shared/data", 2)
    return path


@pytest.fixture(scope="session")
def sources_root() -> Path:
    return _sources()


@pytest.fixture(scope="session")
def data_source(sources_root) -> Path:
    """The read-only folder with the four official MNIST .gz files."""
    return sources_root / "MNIST" / "raw"


def staged_root(root: Path, source: Path, name: str = "mnist") -> Path:
    """`root` with the dataset's archives staged from `source`, extracted, and its base version made (readers of a
    shared root then never write into it)."""
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset, stage_source
    from digitgen.data.versions import list_versions

    stage_source(source, root, get_dataset(name))
    load_dataset(root, get_dataset(name), download=True)
    list_versions(root, get_dataset(name))
    return root


def suite_folder(request, tmp_path_factory, name: str, make) -> Path:
    """`<the suite's temporary folder>/<name>`, made once by `make(folder)` for the whole suite: pytest-xdist's workers
    share it (their common folder, pytest-N/, under a lock: the first makes it, the others wait and read it)."""
    from digitgen.io import locked

    shared = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):
        shared = shared.parent  # .../pytest-N/, above each worker's popen-gwK/
    folder, done = shared / name, shared / f"{name}.done"
    with locked(folder):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def data_root(request, tmp_path_factory, data_source) -> Path:
    """A data root with MNIST staged and extracted once per suite. The trial runs on it leave their judges there
    (one per training-set size), for every worker's later trials."""
    return suite_folder(request, tmp_path_factory, "data", lambda root: staged_root(root, data_source))


@pytest.fixture(scope="session")
def mnist(data_root):
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset

    return load_dataset(data_root, get_dataset("mnist"))


@pytest.fixture(scope="session")
def fashion_root(request, tmp_path_factory, sources_root) -> Path:
    """A data root with Fashion-MNIST staged and extracted once per suite."""
    return suite_folder(
        request, tmp_path_factory, "fashion", lambda root: staged_root(root, sources_root, "fashion-mnist")
    )


@pytest.fixture(scope="session")
def fashion(fashion_root):
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset

    return load_dataset(fashion_root, get_dataset("fashion-mnist"))


@pytest.fixture(scope="session")
def judged_root(request, tmp_path_factory, data_root) -> Path:
    """A pristine data root with MNIST and its judge classifier (trained once, on all 60,000 images: once per
    suite, shared by pytest-xdist's workers). Tests that add data versions work on copies of it (`fresh_root`)."""

    def make(root: Path) -> None:
        from digitgen.config import PipelineConfig
        from digitgen.data.datasets import get_dataset
        from digitgen.data.loading import dataset_fingerprint
        from digitgen.data.versions import list_versions
        from tasks.classifier import train_judge

        copy_archives(data_root, root)
        config = PipelineConfig(data_root=root, progress=False, device="cpu")
        train_judge.fn(config, dataset_fingerprint(root, get_dataset("mnist")))
        list_versions(root, get_dataset("mnist"))  # its base version made now: readers never write into it

    return suite_folder(request, tmp_path_factory, "judged", make)


def no_partial_files(folder: Path) -> bool:
    """No temporary file (`*.tmp`) of a write left anywhere under `folder`."""
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def copy_archives(data_root: Path, dst: Path) -> Path:
    """`dst` holding a copy of `data_root`'s MNIST archives and files alone (no judge, no version): a root of its
    own to damage or to train a judge in."""
    shutil.copytree(data_root / "mnist" / "raw", dst / "mnist" / "raw")
    return dst


def copy_root(judged_root: Path, dst: Path) -> Path:
    shutil.copytree(judged_root, dst)
    return dst


@pytest.fixture
def fresh_root(tmp_path, judged_root) -> Path:
    """A data root of this test's own, copied from `judged_root`: add versions to it freely."""
    return copy_root(judged_root, tmp_path / "data")


@pytest.fixture
def source_copy(tmp_path, data_source) -> Path:
    """A writable copy of the source folder, for tests that damage it."""
    dst = tmp_path / "source"
    shutil.copytree(data_source, dst)
    return dst


# The least run that may challenge the champion: all the data (a run made with --train-limit or --test-limit is a
# trial, never a candidate), one epoch of a small MLP with 8 latent dimensions (its samplers fit in 1.7 s and its
# evaluation takes 3.6 s, against 3.6 and 4.1 s with 16, on one thread), few importance samples and generated images
# (live_server.WHOLE and cli_runs._candidate take theirs from it).
CANDIDATE = {
    "epochs": 1,
    "hidden": [64],
    "latent_dim": 8,
    "is_samples": 5,
    "quality_samples": 200,
    "batch_size": 256,
    "device": "cpu",
    "progress": False,
}


# A run that takes seconds: a trial on part of the data.
TINY = {
    "epochs": 1,
    "train_limit": 2000,
    "test_limit": 1000,
    "is_samples": 20,
    "quality_samples": 1000,
    "batch_size": 128,
    "device": "cpu",
    "progress": False,
}


@pytest.fixture
def tiny(tmp_path, data_root) -> dict:
    """Flow parameters for a run that takes seconds."""
    return {**TINY, "data_root": data_root, "data_source": None, "out": tmp_path / "artifacts"}


def pytest_configure(config):
    import scheduling

    config.pluginmanager.register(scheduling.Ordering(), "digitgen-ordering")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(scheduling.ModuleScheduling(), "digitgen-scheduling")


def champion_of(out, dataset: str = "mnist", binarize: str = "none", tracking_uri: str | None = None) -> dict | None:
    """The champion in the run folders' MLflow store (the default: <out>/mlflow.db), or None."""
    from digitgen.registry.tracking import Store, model_name, store_uri

    uri = store_uri(out, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    return Store(uri, out).champion(model_name(dataset, binarize))
