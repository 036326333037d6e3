"""Deployments as a team runs them: registered by `make deploy` on a PostgreSQL-backed server, run by process workers
started in empty folders with a HOME of their own and no checkout. Each run clones the code itself (the pull step),
and every worker reads and writes the one data root and output folder that `make deploy` recorded."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import copy_archives, copy_root
from live_server import BIN, ROOT, TINY, WHOLE, _client, _start, _stop, prefect_server, reaching

from digitgen.alerts import RERUN_CRASHED
from digitgen.limits import LIMITS


def _git(*args, cwd=ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def team(tmp_path_factory, judged_root, pg):
    """A server, a repository to clone (this checkout's HEAD, on a branch of its own), shared folders, and the
    deployments registered by `make deploy` as the README says."""
    tmp = tmp_path_factory.mktemp("team")
    repo = tmp / "digitgen.git"
    _git("clone", "-q", "--bare", str(ROOT), str(repo))
    _git("update-ref", "refs/heads/under-test", _git("rev-parse", "HEAD"), cwd=repo)
    shared = tmp / "shared"
    data_root, out = copy_root(judged_root, shared / "data"), shared / "artifacts"
    with prefect_server(tmp, pg.create_database("team")) as (url, env), reaching(url):
        deployer = {
            **env,
            "DIGITGEN_REPO_URL": str(repo),
            "DIGITGEN_REPO_BRANCH": "under-test",
            "DIGITGEN_DATA_ROOT": str(data_root),
            "DIGITGEN_OUT": str(out),
        }
        done = subprocess.run(["make", "deploy"], cwd=ROOT, env=deployer, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield {"tmp": tmp, "env": env, "repo": repo, "data_root": data_root, "out": out, "deploy": done}


def test_make_deploy_records_where_code_and_state_live(team):
    """The deployments clone the recorded repository and branch, carry the absolute shared folders as job
    variables, keep prefect.yaml's schedules, triggers and limits, and `digitgen apply` created the global limits
    and the crash re-run automation."""
    with _client() as c:
        nightly = c.read_deployment_by_name("digit-pipeline/nightly")
        retrain = c.read_deployment_by_name("digit-pipeline/retrain")
        automations = c.read_automations()
        limits = {name: c.read_global_concurrency_limit_by_name(name).limit for name in LIMITS}
    assert nightly.work_pool_name == "digitgen-process"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.schedules[0].schedule.timezone == "Europe/London"
    assert not retrain.schedules and retrain.parameters["epochs"] == 10
    assert retrain.global_concurrency_limit.limit == 1 and nightly.global_concurrency_limit.limit == 1
    assert any("digitgen.data.changed" in str(a.trigger) for a in automations)
    for deployment in (nightly, retrain):
        (step,) = deployment.pull_steps
        clone = step["prefect.deployments.steps.git_clone"]
        assert clone["repository"] == str(team["repo"]) and clone["branch"] == "under-test", step
        env = deployment.job_variables["env"]
        assert env["DIGITGEN_DATA_ROOT"] == str(team["data_root"]) and env["DIGITGEN_OUT"] == str(team["out"])
        assert env["MLFLOW_TRACKING_URI"] == "", "unset: the store under DIGITGEN_OUT, never a literal placeholder"
    assert limits == LIMITS
    assert RERUN_CRASHED in [a.name for a in automations]


def _worker(team, name: str):
    """A process worker in an empty folder, with a HOME and a Prefect home of its own, none of the deployer's
    digitgen settings and no checkout on its path."""
    folder = team["tmp"] / name
    (folder / "home").mkdir(parents=True)
    (folder / "work").mkdir()
    env = {k: v for k, v in team["env"].items() if not k.startswith("DIGITGEN_") and k != "PYTHONPATH"}
    env.update(
        HOME=str(folder / "home"), PREFECT_HOME=str(folder / "home" / ".prefect"), PREFECT_WORKER_QUERY_SECONDS="2"
    )
    proc = _start(
        [str(BIN / "prefect"), "worker", "start", "--pool", "digitgen-process", "--name", name],
        env,
        folder / "worker.log",
        cwd=folder / "work",
    )
    return proc, folder


def _retrain_on(team, name: str, run_name_hint: str):
    """Start worker `name`, run the retrain deployment on it (tiny settings, no paths: those come from the
    deployment), stop the worker; returns the flow run and the worker's folder."""
    from prefect.deployments import run_deployment

    proc, folder = _worker(team, name)
    try:
        run = run_deployment(
            "digit-pipeline/retrain",
            parameters={**TINY, **WHOLE, "seed": len(run_name_hint)},
            job_variables={"working_dir": str(folder / "work")},
            timeout=600,
            poll_interval=2,
        )
    finally:
        _stop(proc)
    log = (folder / "worker.log").read_text()
    assert run.state.is_completed(), f"{run.state}\n{log[-4000:]}"
    return run, folder


def test_workers_in_empty_folders_clone_the_code_and_share_one_state(team):
    """Two workers in different folders, one after the other: each run clones the repository into its worker's
    folder and runs from the clone; both write to the one output folder (run folders named after their flow runs,
    one MLflow store with both gate decisions: candidates, on all the data) and read the one data root; nothing
    lands in a worker's folder but the clone."""
    first, folder_a = _retrain_on(team, "worker-a", "a")
    second, folder_b = _retrain_on(team, "worker-b", "bb")
    for run, folder in ((first, folder_a), (second, folder_b)):
        (clone,) = [p for p in (folder / "work").iterdir()]
        assert (clone / "flows" / "pipeline.py").is_file() and (clone / ".git").is_dir(), clone
        written = _git("status", "--porcelain", "--ignored", "--untracked-files=all", cwd=clone).splitlines()
        assert [w for w in written if "__pycache__" not in w] == [], written  # the run wrote nothing into its clone
        assert _git("rev-parse", "HEAD", cwd=clone) == _git("rev-parse", "HEAD")
        run_dir = team["out"] / f"{run.name}-{str(run.id)[:8]}"
        assert (run_dir / "report.md").is_file(), sorted(p.name for p in team["out"].iterdir())
    from digitgen.registry.tracking import Store, store_uri

    store = Store(store_uri(team["out"], None), team["out"])  # the one MLflow store under the shared output folder
    decisions = store.decisions("mnist", "digitgen-mnist")
    assert [d["run_name"] for d in decisions] == [f"{r.name}-{str(r.id)[:8]}" for r in (first, second)]
    versions = {
        json.loads((team["out"] / d["run_name"] / "metrics.json").read_text())["data_version"] for d in decisions
    }
    assert len(versions) == 1 and (team["data_root"] / "mnist" / "versions" / f"{versions.pop()}.json").is_file()
    assert os.environ.get("DIGITGEN_OUT") != str(team["out"])  # the state came from the deployment, not from here


def test_make_server_db_postgres_keeps_its_state_in_the_named_database(tmp_path, pg):
    """`make server DB=postgres` runs Prefect's server on the database PREFECT_API_DATABASE_CONNECTION_URL names,
    and without a PostgreSQL URL it refuses in one line, saying what to set."""
    from live_server import _free_port, _wait

    base = {k: v for k, v in os.environ.items() if "DATABASE_CONNECTION_URL" not in k}
    base["PREFECT_HOME"] = str(tmp_path / "home")
    refused = subprocess.run(
        ["make", "server", "DB=postgres"], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "set PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://" in refused.stdout
    port = _free_port()
    env = {**base, "PREFECT_API_DATABASE_CONNECTION_URL": pg.create_database("made")}
    proc = _start(["make", "server", "DB=postgres", f"PORT={port}"], env, tmp_path / "server.log", cwd=ROOT)
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):

            def healthy():
                with get_client(sync_client=True) as c:
                    return c.api_healthcheck() is None

            _wait(healthy, 120, "make server DB=postgres", tmp_path / "server.log")
            with get_client(sync_client=True) as c:
                c.create_work_pool(_pool("made-here"))
        assert pg.query("made", "select name from work_pool where name = 'made-here'") == ["made-here"]
    finally:
        _stop(proc)
    assert not (tmp_path / "home" / "prefect.db").exists(), "nothing went to SQLite"


def _pool(name: str):
    from prefect.client.schemas.actions import WorkPoolCreate

    return WorkPoolCreate(name=name, type="process")


def test_the_temporary_server_stays_sqlite_beside_a_teams_database(tmp_path, monkeypatch):
    """A bare run's temporary server keeps its state in the Prefect home's SQLite file even where a team's
    PostgreSQL URL is set (here one that nothing answers)."""
    from prefect.settings import PREFECT_HOME, temporary_settings

    from digitgen.server import _stop_server, start_server

    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with temporary_settings({PREFECT_HOME: tmp_path}):
        proc, url = start_server()
    try:
        assert url.startswith("http://127.0.0.1:") and (tmp_path / "prefect.db").is_file()
    finally:
        _stop_server(proc)


def test_runs_sharing_a_data_root_train_its_judge_once(tmp_path, data_root, monkeypatch):
    """Two runs reaching a data root without a judge at once (two workers' runs): one trains it, the other waits and
    reads it, instead of each training its own and writing it twice."""
    from concurrent.futures import ThreadPoolExecutor

    import tasks.classifier
    from digitgen.config import PipelineConfig
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import dataset_fingerprint

    root = copy_archives(data_root, tmp_path / "data")
    trained = []
    train_classifier = tasks.classifier.train_classifier
    monkeypatch.setattr(
        tasks.classifier, "train_classifier", lambda *a, **k: trained.append(1) or train_classifier(*a, **k)
    )
    config = PipelineConfig(data_root=root, train_limit=1000, progress=False, device="cpu")
    fingerprint = dataset_fingerprint(root, get_dataset("mnist"))
    with ThreadPoolExecutor(2) as pool:
        judges = list(pool.map(lambda _: tasks.classifier.train_judge.fn(config, fingerprint), range(2)))
    assert len(trained) == 1, f"the judge was trained {len(trained)} times"
    assert judges[0] == judges[1] and os.path.isfile(judges[0].checkpoint)
