"""The CLI's own temporary Prefect server, and interruptions that end a run cleanly.

With no PREFECT_API_URL, Prefect would start a temporary server inside the run's process group: Ctrl-C reaches it
first, and the run then retries a dead API for minutes. Ours runs in a session of its own, so the terminal's
signals reach only the CLI, and with a parent-death signal, so it ends with the CLI even under kill -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _server_class():
    from prefect.server.api.server import SubprocessASGIServer

    class OwnedServer(SubprocessASGIServer):
        """Prefect's temporary server, started in its own session and bound to the life of this process."""

        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect
            from prefect.settings import get_current_settings

            env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, **env, **get_current_settings().to_environment_variables(exclude_unset=True)},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    return OwnedServer


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """The configured Prefect server, or a temporary one of ours for the life of the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = _server_class()()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url  # for child processes too (Dask workers)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield
            finally:
                _drain()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


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
