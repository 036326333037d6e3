"""The locks of one host's runs: the writers of one SQLite store one at a time, and the champion decision one at a
time (a team's server store needs neither: its global limit digitgen-champion covers every host)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from digitgen.io import locked


def writing(uri: str):
    """Serialise the processes of one host that write to one SQLite store (its first use creates the tables, and
    SQLite refuses concurrent writers); a server store needs nothing."""
    if uri.startswith("sqlite:///"):
        return locked(Path(uri.removeprefix("sqlite:///")))  # <store>.lock
    return contextlib.nullcontext()


def gate_lock(out: Path):
    """The champion decision of the runs of one host, one at a time (the global limit digitgen-champion, held around
    it on a team's server, covers every host)."""
    return locked(Path(out) / ".champion")  # <out>/.champion.lock
