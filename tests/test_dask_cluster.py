"""Scale-out against a real cluster: a `dask scheduler` and two `dask worker` processes started here, then
`digitgen sweep --dask-address` and `digitgen run --task-runner dask --dask-address` through the CLI, as a user runs
them. The scheduler's task stream shows which worker computed each task, so a run that quietly fell back to a
LocalCluster (or to threads in the CLI's process) records nothing on this scheduler and fails the test."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runs import _flags

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = _flags(
    {"epochs": 1, "train_limit": 1000, "test_limit": 500, "is_samples": 5, "batch_size": 128, "device": "cpu"}
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    """The suite's environment (its PREFECT_HOME, no PREFECT_API_URL, DIGITGEN_DATA_SOURCE as given), the checkout
    importable, and no thread limits left behind by a Dask cluster in this process."""
    from harness import suite_threads

    env = {**suite_threads(dict(os.environ)), "PREFECT_LOGGING_LEVEL": "WARNING"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _start(args: list, log: Path) -> subprocess.Popen:
    """A process in a session of its own, so that killing its group takes its children (Dask's worker processes)."""
    return subprocess.Popen(
        [str(a) for a in args],
        cwd=ROOT,
        env=_env(),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.log")))


@pytest.fixture
def cluster(tmp_path_factory):
    """A scheduler on a free loopback port and two single-threaded workers, each a `dask worker` process. One per
    test: a worker process sends its task runs' events to the first Prefect server it served (Prefect keeps one
    events client per process), and these tests use two servers."""
    import psutil
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    client = None
    try:
        procs.append(
            _start(
                [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                tmp / "scheduler.log",
            )
        )
        for i in (1, 2):
            procs.append(
                _start(
                    [
                        BIN / "dask",
                        "worker",
                        address,
                        "--nthreads",
                        1,
                        "--nworkers",
                        1,
                        "--no-dashboard",
                        "--name",
                        f"external-{i}",
                        "--local-directory",
                        tmp / f"worker-{i}",
                    ],
                    tmp / f"worker-{i}.log",
                )
            )
        deadline = time.monotonic() + 60
        while True:  # the scheduler listens (or has died, with its log to say why)
            assert all(p.poll() is None for p in procs), "a Dask process ended early\n" + _logs(tmp)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the scheduler did not listen within 60 s\n" + _logs(tmp)
                time.sleep(0.5)
        client = Client(address, timeout=60)
        try:
            client.wait_for_workers(2, timeout=60)
        except TimeoutError:
            pytest.fail("the two workers did not connect within 60 s\n" + _logs(tmp))
        # The workers are ours: each is a child process of one of the `dask worker` processes started above.
        pids = client.run(os.getpid)
        launchers = {p.pid for p in procs[1:]}
        assert len(pids) == 2 and all(psutil.Process(pid).ppid() in launchers for pid in pids.values()), pids
        yield {"address": address, "client": client, "workers": set(pids), "pids": list(pids.values()), "tmp": tmp}
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            _stop(proc)


def _digitgen(args: list, env: dict) -> subprocess.CompletedProcess:
    """The installed `digitgen` command, run as a user runs it."""
    return subprocess.run(
        [str(BIN / "digitgen"), *map(str, args)],
        cwd=ROOT,
        env={**_env(), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _descendants(pids) -> set[int]:
    import psutil

    found = set()
    for pid in pids:
        try:
            found |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    return found


def _on_the_cluster(cluster, args: list, env: dict) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the CLI; return its result and the tasks this cluster's scheduler saw computed meanwhile. The workers
    start no Prefect server of their own: no process of theirs outlives the run, and their logs name none."""
    from distributed import get_task_stream

    before = _descendants(cluster["pids"])
    with get_task_stream(client=cluster["client"]) as stream:
        done = _digitgen(args, env)
    assert done.returncode == 0, f"{done.stderr[-4000:]}\n{_logs(cluster['tmp'])}"
    assert _descendants(cluster["pids"]) <= before, "a process the workers started outlived the run"
    assert "temporary server" not in _logs(cluster["tmp"]).lower(), _logs(cluster["tmp"])
    return done, [t for t in stream.data if any(s["action"] == "compute" for s in t["startstops"])]


def _prefix(key) -> str:
    return str(key).rsplit("-", 1)[0]


def _finite(*values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def test_sweep_runs_on_an_external_dask_cluster(cluster, tmp_path, data_root):
    """With no PREFECT_API_URL, the sweep's temporary server is the one the workers report to: its database (in
    the sweep's Prefect home) holds the grid points' task runs."""
    import sqlite3

    out = tmp_path / "out"
    done, computed = _on_the_cluster(
        cluster,
        [
            "sweep",
            "--dask-address",
            cluster["address"],
            "--betas",
            "0.5",
            "2",
            "--latent-dims",
            "2",
            *SMALL,
            "--data-root",
            data_root,
            "--out",
            out,
            "--run-name",
            "grid",
        ],
        {"PREFECT_HOME": str(tmp_path / "home")},
    )
    with sqlite3.connect(tmp_path / "home" / "prefect.db") as db:
        reported = db.execute("select name, state_type from task_run where name like 'vae beta=%'").fetchall()
    assert sorted(reported) == [("vae beta=0.5 latent=2", "COMPLETED"), ("vae beta=2.0 latent=2", "COMPLETED")]
    folder = out / "sweep-grid"
    assert Path(done.stdout.strip().splitlines()[-1]) == folder.resolve()

    summary = json.loads((folder / "sweep.json").read_text())
    results = summary["results"]
    assert sorted((r["beta"], r["latent_dim"]) for r in results) == [(0.5, 2), (2.0, 2)]
    for r in results:
        assert _finite(r["test_nll_is_nats"], r["nll_stderr"], r["test_neg_elbo_nats"], r["train_seconds"]), r
        assert 0 < r["test_nll_is_nats"] < 600, r  # nats per 28x28 image: a trained model, not a blank one
        assert (Path(r["run_dir"]) / "vae.pt").is_file()
    assert summary["best"]["test_nll_is_nats"] == min(r["test_nll_is_nats"] for r in results)
    assert (folder / "sweep_nll.png").stat().st_size > 0

    # Each grid point was computed once, by one of the external workers.
    assert sorted(_prefix(t["key"]) for t in computed) == ["train_and_score", "train_and_score"], computed
    assert {t["worker"] for t in computed} <= cluster["workers"], computed


def test_run_trains_vae_and_ae_on_an_external_dask_cluster(cluster, tmp_path, data_root, shared_server):
    """Against a running server (as a deployed run has), the training task runs on the workers report to it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentTaskRunId,
        FlowRunFilterStartTime,
    )
    from prefect.types import DateTime

    out = tmp_path / "out"
    started = DateTime.now("UTC")
    done, computed = _on_the_cluster(
        cluster,
        [
            "run",
            "--task-runner",
            "dask",
            "--dask-address",
            cluster["address"],
            *SMALL,
            "--quality-samples",
            "500",
            "--no-progress",
            "--data-root",
            data_root,
            "--out",
            out,
            "--run-name",
            "on-dask",
        ],
        shared_server,
    )
    with get_client(sync_client=True) as c:  # the runs started since: the suite's server holds every worker's runs
        recent = c.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))
        (run,) = [r for r in recent if r.parameters.get("run_name") == "on-dask"]
        own = [t.id for t in c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))]
        subflows = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=own))
        )  # train-in-parallel
        tasks = c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id, *(r.id for r in subflows)]))
        )
    trained = sorted(
        (t.name.rsplit("-", 1)[0], t.state_type.value) for t in tasks if t.name.startswith(("train_vae", "train_ae"))
    )
    assert trained == [("train_ae", "COMPLETED"), ("train_vae", "COMPLETED")], trained
    folder = out / "on-dask"
    assert Path(done.stdout.strip().splitlines()[-1]) == folder.resolve()

    metrics = json.loads((folder / "metrics.json").read_text())
    vae = metrics["vae"]
    assert _finite(
        vae["test_recon_nats"],
        vae["test_kl_nats"],
        vae["test_neg_elbo_nats"],
        vae["test_nll_is_nats"],
        vae["test_nll_is_stderr"],
        metrics["ae"]["test_recon_nats"],
    ), metrics
    assert 0 < vae["test_nll_is_nats"] < 600 and 0 < metrics["ae"]["test_recon_nats"] < 600, metrics
    assert _finite(metrics["train_seconds"]["vae"], metrics["train_seconds"]["ae"]), metrics["train_seconds"]
    assert (folder / "vae.pt").is_file() and (folder / "ae.pt").is_file() and (folder / "report.md").is_file()

    # Both models were trained by the external workers, once each; nothing else of the run went to the cluster.
    assert sorted(_prefix(t["key"]) for t in computed) == ["train_ae", "train_vae"], computed
    assert {t["worker"] for t in computed} <= cluster["workers"], computed
