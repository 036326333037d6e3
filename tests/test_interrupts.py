"""Stopping a run: Ctrl-C and SIGTERM end it within seconds with a resume hint, and its temporary Prefect server
never outlives it (not even a kill -9 of the CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from cli_runs import ROOT, _cli, _settings


def _start_and_wait_for_epoch(tmp_path, data_root, name: str) -> tuple[subprocess.Popen, list[int]]:
    """A CLI run in a session of its own, once its first epoch is saved; returns it and its child processes."""
    import psutil

    args, env = _cli(_settings(data_root, tmp_path, name, epochs=6))
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
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
def test_an_interrupted_run_stops_in_seconds_says_how_to_resume_and_leaves_no_server(tmp_path, data_root, sig,
                                                                                    target):  # fmt: skip
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
