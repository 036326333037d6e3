"""Stopping a run: Ctrl-C and SIGTERM end it within seconds with a resume hint, and its temporary Prefect server
never outlives it (not even a kill -9 of the CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from cli_runs import ROOT, _cli, _settings


def _start_and_wait_for_epoch(tmp_path, data_root, name: str) -> tuple[subprocess.Popen, list[int]]:
    """A CLI run in a session of its own, once its first epoch is saved; returns it and its child processes."""
    import psutil

    args, env = _cli(_settings(data_root, tmp_path, name, epochs=6))
    proc = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    first = tmp_path / name / "checkpoints" / "vae-epoch-001.pt"
    deadline = time.monotonic() + 180
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.exists(), proc.communicate(timeout=30)[1][-2000:]
    return proc, [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]


def _gone(pids: list[int], within: float) -> bool:
    import psutil

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    "sig, target",
    [(signal.SIGINT, "group"), (signal.SIGINT, "cli"), (signal.SIGTERM, "group"), (signal.SIGTERM, "cli")],
)
def test_an_interrupted_run_stops_in_seconds_says_how_to_resume_and_leaves_no_server(tmp_path, data_root, sig, target):
    proc, children = _start_and_wait_for_epoch(tmp_path, data_root, "stopped")
    assert children, "the run has its temporary Prefect server"
    sent = time.monotonic()
    if target == "group":  # Ctrl-C in a terminal: the whole foreground process group
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 20, "stopped within seconds"
    assert proc.returncode == 128 + sig
    last = err.strip().splitlines()[-1]
    folder = (tmp_path / "stopped").resolve()
    assert last.startswith("digitgen: interrupted after epoch ") and last.endswith(
        f"; resume with: digitgen run --resume {folder}"
    ), err[-2000:]
    assert "Traceback" not in err and "ConnectError" not in err, err[-2000:]
    assert _gone(children, 10), "no server process survives the run"


def test_kill_9_of_the_cli_takes_its_temporary_server_with_it(tmp_path, data_root):
    proc, children = _start_and_wait_for_epoch(tmp_path, data_root, "killed")
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone(children, 15), "the temporary server dies with the CLI (parent-death signal)"


# --- an ingest stopped around its commit ---------------------------------------------------------------------------


STOPPED = """
import os, sys
import tasks.batches
from digitgen.cli import main

real, when = tasks.batches.add_batch, sys.argv[1]

def stopped(*args, **kwargs):  # SIGTERM just before or just after the new version is committed
    if when == "before commit":
        os.kill(os.getpid(), 15)
    manifest = real(*args, **kwargs)
    if when == "after commit":
        os.kill(os.getpid(), 15)
    return manifest

tasks.batches.add_batch = stopped
main(sys.argv[2:])
"""


@pytest.mark.parametrize("when", ["before commit", "after commit"])
def test_an_interrupted_ingest_says_what_was_committed(tmp_path, fresh_root, mnist, shared_server, when):
    """SIGTERM around the commit: one line that tells the truth about the data version, and the signal's code."""
    from batch_factory import new_handwriting, pick, write_batch

    from digitgen.data.datasets import get_dataset
    from digitgen.data.versions import list_versions

    MNIST = get_dataset("mnist")
    images, labels = pick(mnist.train_images, mnist.train_labels, 200, seed=1)
    good = write_batch(tmp_path / "good", new_handwriting(images, seed=1), labels)
    base = list_versions(fresh_root, MNIST)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            STOPPED,
            when,
            "ingest",
            str(good),
            "--data-root",
            str(fresh_root),
            "--device",
            "cpu",
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **shared_server, "PREFECT_LOGGING_LEVEL": "ERROR"},
    )
    assert done.returncode == 143 and "Traceback" not in done.stderr, done.stderr[-3000:]
    versions = list_versions(fresh_root, MNIST)
    if when == "after commit":
        assert len(versions) == 2 and versions[-1]["batches"][-1]["name"] == "good"
        assert (
            f"digitgen: ingest interrupted after its commit: batch good is part of the new data version "
            f"{versions[-1]['id']}" in done.stderr
        ), done.stderr[-3000:]
        assert "unchanged" not in done.stderr
    else:
        assert versions == base
        assert f"digitgen: ingest interrupted; the data version is unchanged ({base[-1]['id']}" in done.stderr
    assert not list((fresh_root / "mnist").glob("**/*.tmp")), "no half-written file"
