"""Whole-run figures for `make bench`: the default `digitgen run`'s wall time and peak RSS, against a Prefect server
that is already running (as deployed runs find one) and with the temporary one a run starts when none is, and
Prefect's own cost per run. `benchmarks/bench_train.py` calls `pipelines()`; run with --overhead it prints that cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def plain_pipeline(out: str, **settings) -> str:
    """The pipeline's stage functions called one after another without Prefect (task.fn), as flows/pipeline.py does."""
    from digitgen.config import PipelineConfig
    from tasks.classifier import train_judge
    from tasks.evaluate import evaluate
    from tasks.ingest import download_data, resolve_version
    from tasks.latent import render_latent_space
    from tasks.promote import gate, promote
    from tasks.report import write_report
    from tasks.run import start_run
    from tasks.sample import generate_samples
    from tasks.samplers import fit_samplers
    from tasks.train import train_ae, train_vae
    from tasks.validate import validate_data

    config = PipelineConfig(**{"out": out, "run_name": "plain", "progress": False, **settings})
    data = download_data.fn(config.dataset, config.data_root, config.data_source)
    version = resolve_version.fn(config.dataset, config.data_root, config.data_version)
    config = config.model_copy(update={"data_version": version["id"]})
    run_dir = start_run.fn(config)
    validate_data.fn(config.dataset, data["data_root"], data["fingerprint"])
    vae, ae = train_vae.fn(config, run_dir), train_ae.fn(config, run_dir)
    samplers = fit_samplers.fn(config, run_dir, vae.checkpoint, ae.checkpoint)
    judge = train_judge.fn(config, data["fingerprint"])
    metrics = evaluate.fn(config, run_dir, vae, ae, judge, samplers)
    decision = gate.fn(config, run_dir, metrics)
    samples = generate_samples.fn(config, run_dir, vae.checkpoint, ae.checkpoint, samplers)
    latent = render_latent_space.fn(config, run_dir, vae.checkpoint, ae.checkpoint)
    report = write_report.fn(config, run_dir, metrics, decision, {**samples, **latent["files"]}, version)
    promote.fn(config, run_dir, metrics, decision)
    return report


@contextlib.contextmanager
def prefect_server():
    """A Prefect server (Prefect's own subprocess server, on a free loopback port) for the life of the block: its API
    URL."""
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # the server inherits it: no telemetry offline
    server = SubprocessASGIServer()
    server.start(timeout=180)
    try:
        yield server.api_url
    finally:
        server.stop()


# Starts the command and writes its peak RSS (KiB) to argv[1]. A child of the benchmark itself would count from
# the benchmark's own memory (Linux carries a parent's resident pages into a child's high-water mark at fork), and the
# benchmark holds torch, a server and data; this launcher holds a few MB.
LAUNCHER = (
    "import os, sys; pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ); _, status, use = os.wait4(pid, 0); "
    "open(sys.argv[1], 'w').write(str(use.ru_maxrss)); code = os.waitstatus_to_exitcode(status); "
    "code < 0 and os.kill(os.getpid(), -code); sys.exit(code)"  # killed by a signal (OOM): the same signal
)


def timed_child(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of a command: its own high-water mark as the kernel counts it (`wait4`'s
    ru_maxrss), not a sample that a short peak slips between."""
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as peak:
        t = time.perf_counter()
        launch = [sys.executable, "-S", "-c", LAUNCHER, peak.name, *args]
        done = subprocess.run(launch, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t
        if done.returncode:
            rc = done.returncode
            what = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
            raise RuntimeError(f"{args} failed ({what}):\n{done.stderr.decode()[-3000:]}")
        return wall, int(peak.read()) / 2**20  # KiB on Linux


def prefect_overhead(pairs: int = 3) -> dict:
    """Prefect's cost per run: the same short pipeline (2 epochs) with and without Prefect, interleaved.

    Runs in a child process: flows against a temporary Prefect server started once (as a deployed run finds one
    running), timed beside the stage functions called directly. The cost does not grow with epochs.
    """
    import statistics

    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import digit_pipeline

    common = {"epochs": 2, "progress": False}
    with tempfile.TemporaryDirectory() as tmp:
        plain_pipeline(tmp, run_name="warm-up", **common)
        t = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=120):
            server_start = time.perf_counter() - t
            diffs = []
            for i in range(pairs):
                t = time.perf_counter()
                plain_pipeline(tmp, run_name=f"plain-{i}", **common)
                plain = time.perf_counter() - t
                t = time.perf_counter()
                digit_pipeline(out=tmp, run_name=f"flow-{i}", **common)
                diffs.append(time.perf_counter() - t - plain)
    return {"overhead": statistics.median(diffs), "diffs": diffs, "server_start": server_start}


def flow_stages(api_url: str, started: float, ended: float) -> list[tuple[str, float]]:
    """Where a default run's wall time went, from the server's record of its flow run (the one that began after
    `started`, a time.time()): the process's start until the flow begins (imports, the checks before anything runs),
    each task in order, Prefect between the tasks, and the flow's end until the process exits."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterStartTime
    from prefect.settings import PREFECT_API_URL, temporary_settings

    after = datetime.fromtimestamp(started, UTC)
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=after)))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    begin, end = run.start_time.timestamp(), run.end_time.timestamp()
    seconds: dict[str, float] = {}
    for t in sorted((t for t in tasks if t.start_time and t.end_time), key=lambda t: t.start_time):
        name = t.name.rsplit("-", 1)[0]  # train_vae-865: the task
        seconds[name] = seconds.get(name, 0.0) + (t.end_time - t.start_time).total_seconds()
    return [
        ("process start until the flow begins (imports, checks)", begin - started),
        *seconds.items(),
        ("Prefect between and around the tasks", end - begin - sum(seconds.values())),
        ("flow end until the process exits", ended - end),
    ]


def pipelines(root: Path) -> dict:
    """The default `digitgen run` (wall, peak RSS, each stage's seconds), and Prefect's cost per run measured on its
    own."""
    import json

    env = {
        **os.environ,
        "DIGITGEN_DATA_ROOT": str(root),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    with tempfile.TemporaryDirectory() as tmp:
        env["PREFECT_HOME"] = f"{tmp}/home"
        digitgen = str(Path(sys.executable).parent / "digitgen")
        cold, _ = timed_child([digitgen, "run", "--out", f"{tmp}/run", "--run-name", "cold", "--no-progress"], env)
        with prefect_server() as url:  # as deployed: a server already running, the judge already cached
            served, started = {**env, "PREFECT_API_URL": url}, time.time()
            wall, rss = timed_child(
                [digitgen, "run", "--out", f"{tmp}/run", "--run-name", "served", "--no-progress"], served
            )
            stages = flow_stages(url, started, time.time())
        out = subprocess.run(
            [sys.executable, __file__, "--overhead"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        ).stdout
    cost = json.loads(out.strip().splitlines()[-1])
    return {
        "wall": wall,
        "cold": cold,
        "peak_rss_gib": rss,
        "stages": stages,
        **cost,
        "prefect_share": cost["overhead"] / wall,
        "with_start_share": (cost["overhead"] + cost["server_start"]) / wall,
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["--overhead"]:
        raise SystemExit("usage: bench_runs.py --overhead (make bench runs the rest)")
    print(json.dumps(prefect_overhead()))
