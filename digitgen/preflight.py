"""Checks `digitgen` makes before anything runs, each failing at once in one line that says what to do: the
project's defaults when run from the checkout, a tracking server that does not answer, data that is neither here nor
reachable, a data version the data root does not have."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from digitgen.config import PipelineConfig

PROJECT = Path(__file__).resolve().parents[1]


def project_defaults() -> None:
    """Run from the project checkout, `digitgen` uses what `make` uses: the project's Prefect home (.prefect/, where
    `make server` keeps its database), no Prefect telemetry, and ../shared/data as the offline data source when it
    exists. Anything already set in the environment wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if (PROJECT / "prefect.yaml").is_file() and (PROJECT / "flows").is_dir():
        os.environ.setdefault("PREFECT_HOME", str(PROJECT / ".prefect"))
        shared = PROJECT.parent / "shared" / "data"
        if shared.is_dir():
            os.environ.setdefault("DIGITGEN_DATA_SOURCE", str(shared))


def require_tracking(config: PipelineConfig) -> None:
    """Fail at once, in one line, when the MLflow tracking server the run would report to does not answer."""
    from digitgen.registry.tracking import TrackingError, is_remote, require_reachable

    if config.tracking_uri and is_remote(config.tracking_uri):
        try:
            require_reachable(config.tracking_uri)
        except TrackingError as e:
            sys.exit(f"digitgen: {e}; nothing was run")


def require_data(config: PipelineConfig) -> None:
    """Fail at once, in one line, before any server starts, when the data root lacks the data and the source cannot
    give it (a missing or empty folder, partial or wrong files), or, with no source, the download mirror cannot be
    reached: no retries, no run folder. Data already verified in the data root needs neither."""
    import socket
    from urllib.parse import urlparse

    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import DataSourceError, adopt_torchvision_layout, check_source, is_extracted

    spec = get_dataset(config.dataset)
    try:
        adopt_torchvision_layout(config.data_root, spec)  # what the run would do first
    except DataSourceError as e:
        sys.exit(f"digitgen: {e}. Nothing was run.")
    if is_extracted(config.data_root, spec):
        return
    if config.data_source is not None:
        try:
            check_source(config.data_source, config.data_root, spec)
        except DataSourceError as e:
            sys.exit(f"digitgen: {e} Nothing was run.")
        return
    mirror = urlparse(spec.torchvision.mirrors[0])
    host = mirror.hostname
    try:
        socket.create_connection((host, mirror.port or (443 if mirror.scheme == "https" else 80)), timeout=3).close()
    except OSError as e:
        sys.exit(
            f"digitgen: {spec.title} is not in {config.data_root} and its download mirror {host} cannot be "
            f"reached ({e.strerror or type(e).__name__}); nothing was run. Set DIGITGEN_DATA_SOURCE (or "
            f"--data-source) to a folder holding the four official .gz files, or a root holding "
            f"{spec.folder}/raw/."
        )


def require_version(config: PipelineConfig) -> None:
    """Fail at once, in one line, when --data-version names a version the data root does not have."""
    from digitgen.data.datasets import get_dataset
    from digitgen.data.loading import is_extracted

    spec = get_dataset(config.dataset)
    if config.data_version is None or not is_extracted(config.data_root, spec):  # not there yet: the run checks
        return
    from digitgen.data.versions import VersionError, get_version

    try:
        get_version(config.data_root, spec, config.data_version)
    except VersionError as e:
        sys.exit(f"digitgen: {e}; nothing was run")
