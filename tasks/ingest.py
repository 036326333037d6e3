"""Stage 1: get the dataset into the data root (from an offline source folder, or through torchvision),
and choose the data version to train on."""

from __future__ import annotations

import errno
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from digitgen.data.datasets import get_dataset
from digitgen.data.loading import (
    DataSourceError,
    dataset_fingerprint,
    folder_fingerprint,
    is_extracted,
    load_dataset,
    resolve_source,
    stage_source,
)
from digitgen.data.versions import get_version, lineage
from digitgen.errors import DigitgenError
from tasks.common import logger


class DownloadError(DigitgenError, RuntimeError):
    """The dataset could not be downloaded."""


class LocalDataError(DigitgenError, RuntimeError):
    """The data root cannot take the dataset (a full disk, a file where a folder should be): no download helps."""


LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR, errno.EROFS}


def _retry_network_errors(task, task_run, state) -> bool:
    """Retry downloads; a bad offline source, an unwritable data root or a full disk will not fix itself, so fail
    at once."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, DataSourceError | PermissionError | LocalDataError)


def _local(e: OSError, data_root: Path) -> LocalDataError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = str(e.strerror or e)
        if "while writing" not in what:
            what += f" while writing into the data root {data_root}; free some space and rerun"
        return LocalDataError(f"{what}, or choose another data root (--data-root or DIGITGEN_DATA_ROOT)")
    return LocalDataError(
        f"data root {data_root}: {e.strerror} ({e.filename}); the data root must be a "
        "writable folder: choose another (--data-root or DIGITGEN_DATA_ROOT)"
    )


def _data_checksum_key(context, parameters: dict) -> str | None:
    """Cache on the data's checksums: unchanged archives (and source) skip the stage; no key when files are missing."""
    spec = get_dataset(parameters["dataset"])
    root, source = Path(parameters["data_root"]), parameters.get("data_source")
    if not is_extracted(root, spec):
        return None
    try:
        source_part = folder_fingerprint(resolve_source(source, spec), spec) if source is not None else "network"
    except DataSourceError:
        return None
    return f"{spec.name}-{dataset_fingerprint(root, spec)}-{source_part}-{root.resolve()}"


@task(
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_retry_network_errors,
    cache_key_fn=_data_checksum_key,
    persist_result=True,
)
def download_data(dataset: str, data_root: Path, data_source: Path | None = None) -> dict:
    """Put the dataset's archives in `<data_root>/<name>/raw` and return the data's fingerprint."""
    log, spec = logger(), get_dataset(dataset)
    try:
        if data_source is not None:
            raw = stage_source(data_source, data_root, spec)
            log.info("Staged %s from %s into %s (md5 verified)", spec.title, data_source, raw)
        load_dataset(data_root, spec, download=True, keep=False)  # no network when the archives verify
    except DataSourceError:
        raise
    except PermissionError as e:
        raise PermissionError(
            f"data root {data_root} is not writable ({e.strerror}): choose another --data-root or make it writable"
        ) from None
    except OSError as e:
        if e.errno in LOCAL_ERRNOS:
            raise _local(e, data_root) from None
        raise _download_error(spec, data_root, e) from e
    except Exception as e:
        raise _download_error(spec, data_root, e) from e
    fingerprint = dataset_fingerprint(data_root, spec)
    log.info("%s ready in %s (fingerprint %s)", spec.title, data_root, fingerprint)
    return {"data_root": str(data_root), "fingerprint": fingerprint}


def _download_error(spec, data_root: Path, e: Exception) -> DownloadError:
    return DownloadError(
        f"could not download {spec.title} into {data_root} ({type(e).__name__}: {e}). If this machine is "
        "offline, set DIGITGEN_DATA_SOURCE (or --data-source) to a folder with the four official .gz files "
        f"(or a root holding {spec.folder}/raw/)."
    )


@task(cache_policy=NONE)
def resolve_version(dataset: str, data_root: Path, data_version: str | None) -> dict:
    """The manifest of the data version to train on: the one asked for, or the newest."""
    manifest = get_version(data_root, get_dataset(dataset), data_version)
    logger().info("Training data: %s", lineage(manifest))
    return manifest
