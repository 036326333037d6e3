"""Stage 1: get MNIST into the data root (from an offline source folder, or through torchvision)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from models.data import DataSourceError, dataset_fingerprint, folder_fingerprint, is_extracted, load_mnist, stage_source
from tasks.common import logger


class DownloadError(RuntimeError):
    """MNIST could not be downloaded."""


def _retry_network_errors(task, task_run, state) -> bool:
    """Retry downloads; a bad offline source will not fix itself, so fail at once."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, DataSourceError)


def _data_checksum_key(context, parameters: dict) -> str | None:
    """Cache on the data's checksums: unchanged archives (and source) skip the stage; no key when files are missing."""
    root, source = Path(parameters["data_root"]), parameters.get("data_source")
    if not is_extracted(root):
        return None
    source_part = folder_fingerprint(source) if source is not None else "network"
    return f"mnist-{dataset_fingerprint(root)}-{source_part}-{root.resolve()}"


@task(
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_retry_network_errors,
    cache_key_fn=_data_checksum_key,
    persist_result=True,
)
def download_mnist(data_root: Path, data_source: Path | None = None) -> dict:
    """Put the MNIST archives in `<data_root>/MNIST/raw` and return the data's fingerprint."""
    log = logger()
    if data_source is not None:
        raw = stage_source(data_source, data_root)
        log.info("Staged MNIST from %s into %s (md5 verified)", data_source, raw)
    try:
        load_mnist(data_root, download=True)  # torchvision skips the network when the files verify
    except DataSourceError:
        raise
    except Exception as e:
        raise DownloadError(
            f"could not download MNIST into {data_root} ({type(e).__name__}: {e}). If this machine is "
            "offline, set DIGITGEN_DATA_SOURCE (or --data-source) to a folder with the four official .gz files."
        ) from e
    fingerprint = dataset_fingerprint(data_root)
    log.info("MNIST ready in %s (fingerprint %s)", data_root, fingerprint)
    return {"data_root": str(data_root), "fingerprint": fingerprint}
