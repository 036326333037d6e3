"""The locks of one host's runs: the writers of one SQLite store one at a time, and the champion decision one at a
time (a team's server store needs neither: its global limit digitgen-champion covers every host)."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

_HELD = threading.local()  # the lock files this thread holds: taking one again inside it is a no-op


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    held = _HELD.__dict__.setdefault("paths", set())
    key = str(path)
    if key in held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)


def writing(uri: str):
    """Serialise the processes of one host that write to one SQLite store (its first use creates the tables, and
    SQLite refuses concurrent writers); a server store needs nothing."""
    if uri.startswith("sqlite:///"):
        return _flock(Path(uri.removeprefix("sqlite:///") + ".lock"))
    return contextlib.nullcontext()


def gate_lock(out: Path):
    """The champion decision of the runs of one host, one at a time (the global limit digitgen-champion, held around
    it on a team's server, covers every host)."""
    return _flock(Path(out) / ".champion.lock")
