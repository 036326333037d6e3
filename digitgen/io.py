"""Atomic file writes (a crash leaves the old file or the new one, never half of one) and file locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT) and str(path) not in str(e):
            raise OSError(e.errno, f"{e.strerror} while writing {path}; free some space and rerun") from e
        raise
    except RuntimeError as e:  # torch.save's writer says "[enforce fail at inline_container.cc] unexpected pos"
        if _disk_full(path.parent):
            raise OSError(
                errno.ENOSPC, f"No space left on device while writing {path}; free some space and rerun"
            ) from e
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into `folder` (None: they can). A folder not there yet is not made: its nearest
    existing parent is probed instead (a temporary file, removed at once)."""
    folder = Path(folder)
    there = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not there.is_dir():
        return f"{there} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=there)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _disk_full(folder: Path) -> bool:
    """Whether the file system holding `folder` has (next to) no space left for an ordinary user."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 20


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` when closed without error."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def cache_dir() -> Path:
    """The machine's cache of digitgen (the precision probe's results, the empty MLflow store):
    $XDG_CACHE_HOME/digitgen, ~/.cache/digitgen by default."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "digitgen"


_HELD = threading.local()  # the lock files this thread holds: taking one again inside it is a no-op


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` so concurrent processes (and threads) update a record one at a time;
    the thread that holds it may take it again inside (a second flock of the file would wait on itself)."""
    lock = path.with_name(path.name + ".lock")
    held = _HELD.__dict__.setdefault("paths", set())
    if str(lock) in held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.add(str(lock))
        try:
            yield
        finally:
            held.discard(str(lock))
            fcntl.flock(handle, fcntl.LOCK_UN)
