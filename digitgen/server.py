"""The CLI's own temporary Prefect server, and interruptions that end a run cleanly.

With no PREFECT_API_URL, Prefect would start a temporary server inside the run's process group: Ctrl-C reaches it
first, and the run then retries a dead API for minutes; and its URL would stay out of the settings that Prefect sends
to Dask workers, so each worker would start a server of its own. Ours is `prefect server start` (the public CLI) in a
session of its own, so the terminal's signals reach only the CLI, with a parent-death signal, so it ends with the CLI
even under kill -9, and with its URL in the settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def reachable_host(peer: str | None) -> str:
    """The address of this machine that `peer` (a URL such as tcp://host:8786, a Dask scheduler's) reaches it on:
    127.0.0.1 when there is no peer or the peer is on loopback."""
    from urllib.parse import urlparse

    host = urlparse(peer if peer and "://" in peer else f"tcp://{peer}").hostname if peer else None
    if not host:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # no packet is sent: the kernel picks the route
        try:
            s.connect((host, 9))
        except OSError:
            return "127.0.0.1"
        return s.getsockname()[0]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        return client.api_healthcheck() is None


def start_server(
    host: str = "127.0.0.1", timeout: float = 120.0, meanwhile: Callable[[], object] | None = None
) -> tuple[subprocess.Popen, str]:
    """`prefect server start` (Prefect's public CLI) on a free port of `host`, without the UI or the scheduler, in a
    session of its own and bound to this process's life; returns the process and its API URL once it answers.
    Its database is always the SQLite file in the Prefect home, even where a team's PostgreSQL URL is set: a run's
    temporary server never writes into the team's database. `meanwhile` runs while the server boots (the CLI
    imports the flow then: on 2 cores the two overlap)."""
    from prefect.settings import get_current_settings

    sqlite = f"sqlite+aiosqlite:///{get_current_settings().home / 'prefect.db'}"
    env = {
        **os.environ,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": sqlite,
        "PREFECT_API_DATABASE_CONNECTION_URL": sqlite,
    }
    port = _free_port(host)
    log = tempfile.TemporaryFile()  # noqa: SIM115 (the server's output, read back only if it fails to start)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            host,
            "--port",
            str(port),
            "--no-ui",
            "--no-scheduler",
            "--no-late-runs",
            "--log-level",
            "ERROR",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    url = f"http://{host}:{port}/api"
    try:
        if meanwhile is not None:
            meanwhile()
    except BaseException:
        _stop_server(proc)
        raise
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _healthy(url):
            return proc, url
        time.sleep(0.3)
    _stop_server(proc)
    log.seek(0)
    tail = log.read().decode(errors="replace")[-2000:]
    raise RuntimeError(f"the temporary Prefect server did not start on {host}:{port}:\n{tail}")


def _stop_server(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def prefect_api(reach: str | None = None, meanwhile: Callable[[], object] | None = None) -> Iterator[None]:
    """The configured Prefect server, or a temporary one of ours for the life of the block, bound where `reach` (a
    Dask scheduler's address) reaches this machine, so that task runs on Dask workers report to it: the API URL is
    in this process's settings, which Prefect sends with each task to a worker, and in the environment of child
    processes. Without it, each worker would start a temporary server of its own. `meanwhile` runs first (while a
    temporary server boots)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        if meanwhile is not None:
            meanwhile()
        yield
        return
    proc, url = start_server(reachable_host(reach), meanwhile=meanwhile)
    os.environ["PREFECT_API_URL"] = url  # for child processes too (local Dask workers)
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield
            finally:
                _drain()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _stop_server(proc)


def _drain(timeout: float = 5.0) -> None:
    """Send the logs and events still queued while the server is up (as prefect_test_harness does), so the
    process does not retry a stopped server on its way out."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=timeout)
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=timeout)


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM; `code` is the shell's exit status for it (130 or 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


@contextlib.contextmanager
def interruptible() -> Iterator[list[int]]:
    """Turn SIGINT and SIGTERM into one clean stop: the block sees KeyboardInterrupt, the caller `Interrupted`
    (whatever the block turned the interruption into). A second signal while stopping ends the process at once."""
    received: list[int] = []

    def handler(signum, frame):
        if received:
            os._exit(128 + received[0])
        received.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    except BaseException:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received:  # the block ended quietly after the signal (a flow that returned a Crashed state)
        raise Interrupted(received[0])


def last_epoch(run_dir: Path) -> int:
    """The newest complete epoch in a run folder (of the model being trained: the AE once it has started)."""
    found = sorted(Path(run_dir).glob("checkpoints/ae-epoch-*.pt")) or sorted(
        Path(run_dir).glob("checkpoints/vae-epoch-*.pt")
    )
    return int(found[-1].stem.rsplit("-", 1)[-1]) if found else 0
