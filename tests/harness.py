"""How the suite's processes share the machine (a plugin of conftest.py): the Prefect API the tests run against, one
test harness for all of pytest-xdist's workers, and one compute thread per process on those workers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import temporary_folder

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
        self.file = Path(temporary_folder("digitgen-suite-api-")) / "url"
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
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        if config.getoption("numprocesses", None):
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
