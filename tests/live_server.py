"""A live Prefect server for the tests that need the real thing: on PostgreSQL (a throwaway cluster, tests/postgres.py),
started on a free loopback port, with the deployments of prefect.yaml served on tiny settings, and the helpers those
tests share."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CANDIDATE

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SERVE = """
import sys, json
from prefect import serve
from digitgen.server_setup import apply_server_objects
from digitgen.serve import build_deployments, check_parameters, load_deployment_specs
tiny = json.loads(sys.argv[1])
specs = load_deployment_specs()
check_parameters(specs)
for s in specs:
    if s["entrypoint"].endswith(":digit_pipeline"):
        s["parameters"] = {**(s.get("parameters") or {}), **tiny}
    elif s["name"] == "generate":  # draws from the champion of the runs the tests make
        s["parameters"] = {"runs": tiny["out"]}
    else:  # check-data watches the same data root
        s["parameters"] = {**(s.get("parameters") or {}), "data_root": tiny["data_root"]}
apply_server_objects()  # as `digitgen serve` does: the global limits and the crash re-run automation
serve(*build_deployments(specs, ["nightly", "retrain", "check-data", "generate"]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, env, log: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, **kw
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait(predicate, timeout: float, what: str, log: Path | None = None, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


@contextlib.contextmanager
def prefect_server(tmp: Path, database_url: str):
    """`prefect server start` on a free loopback port, its database the PostgreSQL one at `database_url`; yields
    the server's URL (the API is under /api) and the environment that reaches it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "home"),
        "PREFECT_API_URL": f"{url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("DIGITGEN_DATA_SOURCE", None)
    # A killed run's training slot comes back when its lease (60 s, the server's minimum) runs out and the
    # repossessor next looks: every second here rather than every 15 s.
    server_env = {
        **env,
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
    }
    proc = _start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        server_env,
        tmp / "server.log",
    )

    def healthy():
        from prefect.client.orchestration import get_client

        with temporary_settings({PREFECT_API_URL: f"{url}/api"}), get_client(sync_client=True) as c:
            return c.api_healthcheck() is None

    try:
        _wait(healthy, 120, "the Prefect server", tmp / "server.log")
        yield url, env
    finally:
        _stop(proc)


@contextlib.contextmanager
def reaching(url: str):
    """This process's Prefect client talks to the server at `url` for the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"{url}/api"}):
        yield


# The served runs are trials on part of the data; parameters that make one a candidate for champion: all the
# data, a small MLP (conftest.CANDIDATE).
WHOLE = {
    "train_limit": None,
    "test_limit": None,
    **{k: CANDIDATE[k] for k in ("hidden", "latent_dim", "is_samples", "quality_samples")},
}
# Served runs long enough to be caught mid-training: 3 epochs after the first, seconds against the test's 0.05 s poll.
SLOW = {"epochs": 4, "train_limit": 6000}
TINY = {
    "epochs": 1,
    "train_limit": 2000,
    "test_limit": 1000,
    "is_samples": 10,
    "quality_samples": 1000,
    "batch_size": 128,
    "device": "cpu",
    "progress": False,
}


@contextlib.contextmanager
def running_server(tmp: Path, judged_root: Path, database_url: str):
    """A PostgreSQL-backed `prefect server` on a free loopback port and the deployments of prefect.yaml served with
    tiny settings; yields where everything is (enter `reaching(found["url"])` to talk to it)."""
    from conftest import copy_root

    data_root = copy_root(judged_root, tmp / "data")  # the retraining loop adds versions to it
    with prefect_server(tmp, database_url) as (url, env):
        tiny = {**TINY, "data_root": str(data_root), "out": str(tmp / "artifacts")}
        # The runner looks for scheduled runs every second (Prefect's default: 10 s), as the team's workers here do.
        served = _start(
            [sys.executable, "-c", SERVE, json.dumps(tiny)],
            {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
            tmp / "serve.log",
            cwd=ROOT,
        )

        def deployed():
            with _client() as c:
                try:
                    return c.read_deployment_by_name("digit-pipeline/retrain") and c.read_deployment_by_name(
                        "check-data/check-data"
                    )
                except Exception:
                    return None

        try:
            with reaching(url):
                _wait(deployed, 120, "the served deployments", tmp / "serve.log")
            yield {
                "url": url,
                "tmp": tmp,
                "out": tmp / "artifacts",
                "serve_log": tmp / "serve.log",
                "data_root": data_root,
                "env": env,
                "database": database_url.rsplit("/", 1)[1],
            }
        finally:
            _stop(served)


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _run_filter(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


class _Receiver:
    """A webhook on loopback that records the JSON bodies posted to it."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts: list[dict] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                posts.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def find(self, text: str):
        return next((p for p in self.posts if text in p.get("subject", "") + p.get("text", "")), None)


PROBE_YAML = """
deployments:
  - name: probe
    entrypoint: flows/check_data.py:check_data
    version: "7"
    paused: true
    concurrency_limit: {limit: 2, collision_strategy: CANCEL_NEW}
    schedules:
      - interval: 5400
        active: false
    triggers:
      - type: compound
        require: all
        within: 600
        triggers:
          - {type: event, expect: [digitgen.probe.first]}
          - {type: event, expect: [digitgen.probe.second]}
"""


# The fixtures of the tests on a live server (this module is a plugin of conftest.py).


@pytest.fixture(scope="session")
def pg():
    """A throwaway PostgreSQL cluster for the live-server tests (each module's server gets a database of its own)."""
    from postgres import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def served(tmp_path_factory, judged_root, pg):
    """One live Prefect server on PostgreSQL with the deployments of prefect.yaml served on tiny settings, shared by
    the modules that test against it (test_server, test_server_recovery, test_ui): started once, not per module."""
    with running_server(tmp_path_factory.mktemp("server"), judged_root, pg.create_database("served")) as found:
        yield found


@pytest.fixture(scope="module")
def server(served):
    """The suite's live server, this module's client pointed at it (test_server, test_server_recovery, test_ui)."""
    with reaching(served["url"]):
        yield served


@pytest.fixture(scope="session")
def api_run(served):
    """A candidate run of the retrain deployment through the API on the live server, made once for the modules
    that read it."""
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
