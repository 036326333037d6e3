"""Shrink everything: tiny data subsets, one epoch, CPU, outputs under tmp_path; never the network."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The suite's own Prefect home: test runs never appear in the user's database (.prefect/ under `make server`).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="digitgen-test-prefect-")
# ...and its own cache: the precision probe's answers, measured on the suite's thread counts, stay out of the user's.
# One cache for the whole suite: pytest-xdist's workers inherit it from the process that started them, so a probe or
# the empty MLflow store is made once, not once per worker.
os.environ["XDG_CACHE_HOME"] = os.environ.get("DIGITGEN_SUITE_CACHE") or tempfile.mkdtemp(prefix="digitgen-test-cache-")
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
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset, stage_source

    stage_source(source, root, get_dataset(name))
    load_dataset(root, get_dataset(name), download=True)
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

    def make(root: Path) -> None:
        from digitgen.data.datasets import get_dataset
        from digitgen.data.versions import list_versions

        staged_root(root, data_source)
        list_versions(root, get_dataset("mnist"))  # its base version made now: readers never write into it

    return suite_folder(request, tmp_path_factory, "data", make)


@pytest.fixture(scope="session")
def mnist(data_root):
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import load_dataset

    return load_dataset(data_root, get_dataset("mnist"))


@pytest.fixture(scope="session")
def fashion_root(request, tmp_path_factory, sources_root) -> Path:
    """A data root with Fashion-MNIST staged and extracted once per suite."""

    def make(root: Path) -> None:
        from digitgen.data.datasets import get_dataset
        from digitgen.data.versions import list_versions

        staged_root(root, sources_root, "fashion-mnist")
        list_versions(root, get_dataset("fashion-mnist"))  # its base version made now: readers never write into it

    return suite_folder(request, tmp_path_factory, "fashion", make)


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

        shutil.copytree(data_root / "mnist" / "raw", root / "mnist" / "raw")
        config = PipelineConfig(data_root=root, progress=False, device="cpu")
        train_judge.fn(config, dataset_fingerprint(root, get_dataset("mnist")))
        list_versions(root, get_dataset("mnist"))  # its base version made now: readers never write into it

    return suite_folder(request, tmp_path_factory, "judged", make)


def no_partial_files(folder: Path) -> bool:
    """No temporary file (`*.tmp`) of a write left anywhere under `folder`."""
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


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


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite in a temp dir) for every test that needs the API: under pytest-xdist the
    one that the process starting the workers runs for all of them (SuiteHarness), else one of this process's own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    url = SuiteHarness.url() if os.environ.get(SUITE_API) else None
    with temporary_settings({PREFECT_API_URL: url}) if url else prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(autouse=True)
def _keep_thread_settings():
    """Dask's nanny leaves OMP_NUM_THREADS=1 in this process's environment; child processes must not inherit it."""
    saved = {k: os.environ.get(k) for k in THREADS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def shared_server(prefect_harness) -> dict:
    """The suite's running Prefect server, for CLI runs whose test is not about the temporary one (saves its ~7 s
    start per run; deployed runs find a server running too)."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value()}


@pytest.fixture(scope="session")
def pg():
    """A throwaway PostgreSQL cluster for the live-server tests (each module's server gets a database of its own)."""
    from postgres import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def suite_threads(env: dict) -> dict:
    """`env` with the suite's thread limits: none alone; one thread per process on pytest-xdist's workers."""
    env = {k: v for k, v in env.items() if k not in THREADS}
    one = os.environ.get("DIGITGEN_SUITE_THREADS")
    return {**env, **dict.fromkeys(THREADS, one)} if one else env


SUITE_API = "DIGITGEN_SUITE_API"  # the file where pytest-xdist's workers find the API URL of their shared harness


class SuiteHarness(threading.Thread):
    """The test harness that pytest-xdist's workers share, run by the process that starts them: one, not one each
    (starting one costs about 9 s of a core, and an idle one goes on polling). It starts in this thread while the
    workers come up and begin their first tests, most of which need no API, instead of before them, with a core idle;
    they read its URL from the file SUITE_API names once it is up (SuiteHarness.url)."""

    def __init__(self):
        super().__init__(name="suite-harness", daemon=True)
        self.file = Path(tempfile.mkdtemp(prefix="digitgen-suite-api-")) / "url"
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        try:  # its start shares the cores with three workers' first tests: a longer wait than alone
            with prefect_test_harness(server_startup_timeout=110):
                self._tell(PREFECT_API_URL.value())
                self.done.wait()
        except Exception as exc:
            if not self.file.exists():  # the workers' tests that need it fail with this, instead of waiting
                self._tell(f"error: the suite's Prefect test harness did not start: {exc!r}")
            raise

    def _tell(self, text: str) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.file)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=60)
        shutil.rmtree(self.file.parent, ignore_errors=True)

    @staticmethod
    def url(timeout: float = 120) -> str:
        """The shared harness's API URL, once it is up (on pytest-xdist's workers)."""
        file, deadline = Path(os.environ[SUITE_API]), time.monotonic() + timeout
        while not file.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"the suite's Prefect test harness gave no URL in {timeout:.0f} s ({file})")
            time.sleep(0.2)
        text = file.read_text()
        if text.startswith("error:"):
            pytest.fail(text)
        return text


HARNESS = pytest.StashKey[SuiteHarness]()  # held by the process that starts the workers


def pytest_configure(config):
    import scheduling

    config.pluginmanager.register(scheduling.Ordering(), "digitgen-ordering")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(scheduling.ModuleScheduling(), "digitgen-scheduling")
        if not hasattr(config, "workerinput") and config.getoption("numprocesses", None):
            config.stash[HARNESS] = SuiteHarness()
            os.environ[SUITE_API] = str(config.stash[HARNESS].file)  # the workers inherit it
    if hasattr(config, "workerinput"):
        # Three workers on two cores: each process (this worker, and every run, server and worker it starts) computes
        # on one thread. Two processes of two threads each on two cores run several times slower than one apiece.
        os.environ["DIGITGEN_SUITE_THREADS"] = "1"
        os.environ.update(dict.fromkeys(THREADS, "1"))


def pytest_unconfigure(config):
    if HARNESS in config.stash:
        config.stash[HARNESS].stop()


@pytest.fixture(scope="session")
def served(tmp_path_factory, judged_root, pg):
    """One live Prefect server on PostgreSQL with the deployments of prefect.yaml served on tiny settings, shared by
    the modules that test against it (test_server, test_server_recovery, test_ui): started once, not per module."""
    from live_server import running_server

    with running_server(tmp_path_factory.mktemp("server"), judged_root, pg.create_database("served")) as found:
        yield found


@pytest.fixture(scope="module")
def server(served):
    """The suite's live server, this module's client pointed at it (test_server, test_server_recovery, test_ui)."""
    from live_server import reaching

    with reaching(served["url"]):
        yield served


@pytest.fixture(scope="session")
def api_run(served):
    """A candidate run of the retrain deployment through the API on the live server, made once for the modules
    that read it."""
    from live_server import WHOLE, reaching
    from prefect.deployments import run_deployment

    with reaching(served["url"]):
        run = run_deployment(
            "digit-pipeline/retrain", parameters={**WHOLE, "run_name": "via-api"}, timeout=600, poll_interval=2
        )
    assert run.state.is_completed(), f"{run.state}\n{served['serve_log'].read_text()[-3000:]}"
    return run


@pytest.fixture(scope="session")
def together(served) -> list:
    """Three runs submitted at once, as a schedule, a trigger and a person would start them, once for the modules
    that read them: a nightly run and a retrain (SLOW settings, `together-nightly` and `together-retrain`), and a
    second retrain (`together-queued`), which waits for the first on the deployment's concurrency slot. Their final
    flow runs, in that order."""
    from live_server import SLOW, _client, _wait, reaching
    from prefect.deployments import run_deployment

    with reaching(served["url"]):
        runs = [
            run_deployment(f"digit-pipeline/{deployment}", parameters={**settings, "run_name": name}, timeout=0)
            for deployment, name, settings in (
                ("nightly", "together-nightly", SLOW),
                ("retrain", "together-retrain", SLOW),
                ("retrain", "together-queued", {}),
            )
        ]
        with _client() as c:

            def all_done():
                found = [c.read_flow_run(r.id) for r in runs]
                return found if all(r.state.is_final() for r in found) else None

            return _wait(all_done, 600, "the nightly and the two retrain runs", served["serve_log"])


@pytest.fixture(scope="session")
def mlflow_team(pg, tmp_path_factory):
    """A team's MLflow: `mlflow server` on PostgreSQL with proxied artifacts, shared by the tests that need one
    (each uses registered models of its own); its URL."""
    from mlflow_server import mlflow_server, pg_backend

    with mlflow_server(tmp_path_factory.mktemp("mlflow"), pg_backend(pg, "mlflow")) as url:
        yield url


def champion_of(out, dataset: str = "mnist", binarize: str = "none", tracking_uri: str | None = None) -> dict | None:
    """The champion in the run folders' MLflow store (the default: <out>/mlflow.db), or None."""
    from digitgen.registry.tracking import Store, model_name, store_uri

    uri = store_uri(out, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    return Store(uri, out).champion(model_name(dataset, binarize))
