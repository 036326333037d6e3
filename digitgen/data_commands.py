"""The commands on data versions: `digitgen ingest BATCH` (a batch checked and made a new version, or quarantined)
and `digitgen versions` (a dataset's versions, each damaged manifest named)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from digitgen.config import INGEST_SETTINGS, PipelineConfig
from digitgen.errors import DigitgenError
from digitgen.preflight import require_data
from digitgen.server_setup import require_reachable_server


def list_versions(config: PipelineConfig) -> None:
    """Print a dataset's versions, the base first and the newest last; then each damaged manifest, by name (exit
    status 1)."""
    from digitgen.data.datasets import get_dataset
    from digitgen.data.versions import VersionError, read_versions

    spec = get_dataset(config.dataset)
    try:
        found, problems = read_versions(config.data_root, spec)
    except (VersionError, OSError) as e:
        sys.exit(f"digitgen: {e}")
    print(f"{'version':<16} {'created':<25} {'training images':>15}  batches")
    for m in found:
        names = ", ".join(b["name"] for b in m["batches"]) or "(the official archives)"
        print(f"{m['id']:<16} {m['created']:<25} {m['n_train']:>15,}  {names}")
    for problem in problems:
        print(f"digitgen: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)


def bounded_heap() -> None:
    """glibc serves allocations under its (growing) mmap threshold from the heap, and a batch's per-chunk arrays
    then pile up there: 20,000 images peaked at 1.8 GiB RSS. A fixed 1 MiB threshold returns every large array to
    the system when it is freed (1.2 GiB). Only for ingest: training reuses its large tensors every step."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: nothing to tune
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def _newest_version(config: PipelineConfig) -> dict | None:
    """The dataset's newest sound version in the data root, or None (none yet, or unreadable)."""
    from digitgen.data.datasets import get_dataset
    from digitgen.data.versions import dataset_dir, read_versions

    spec = get_dataset(config.dataset)
    if not (dataset_dir(config.data_root, spec) / "versions").is_dir():
        return None  # nothing made here: the ingest makes the base version
    try:
        found = read_versions(config.data_root, spec)[0]
    except (OSError, DigitgenError):
        return None
    return found[-1] if found else None


def ingest(ns: argparse.Namespace, config: PipelineConfig) -> None:
    """Run the ingest flow on one batch folder; print the new version id last, or exit 1 naming what failed."""
    if not ns.batch.is_dir():
        sys.exit(f"digitgen: batch folder {ns.batch} does not exist (expected <class index>/<name>.png inside it)")
    try:
        config.check_writable(("data_root",))
    except PermissionError as e:
        sys.exit(f"digitgen: invalid settings, nothing was run:\n  {e}")
    require_reachable_server()
    require_data(config)
    bounded_heap()
    from digitgen.server import Interrupted, interruptible, prefect_api
    from flows.ingest import ingest_batch

    settings = {k: v for k, v in config.model_dump().items() if k in INGEST_SETTINGS}
    before = _newest_version(config)
    try:
        with prefect_api(), interruptible():
            manifest = ingest_batch(ns.batch, **settings)
    except Interrupted as stop:
        after = _newest_version(config)
        if (
            after is not None
            and after["id"] != (before or {}).get("id")
            and after["batches"][-1]["name"] == ns.batch.resolve().name
        ):
            print(
                f"digitgen: ingest interrupted after its commit: batch {ns.batch.resolve().name} is part of the new "
                f"data version {after['id']} (ingest it again to finish its event and artifact)",
                file=sys.stderr,
            )
        else:
            print(
                f"digitgen: ingest interrupted; the data version is unchanged "
                f"({(before or {}).get('id', 'none yet')}; ingest the batch again)",
                file=sys.stderr,
            )
        sys.exit(stop.code)
    except DigitgenError as e:  # written for the user (a refusal lists each failed expectation)
        sys.exit(f"digitgen: {e}")
    except Exception as e:  # the flow logged the traceback; say what failed, once
        sys.exit(f"digitgen: ingest failed: {type(e).__name__}: {e}")
    print(f"{ns.batch.resolve().name}: accepted, {manifest['n_train']:,} training images", file=sys.stderr)
    print(manifest["id"], flush=True)
