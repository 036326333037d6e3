"""Task runners for scaling out: a Dask cluster, local by default or an existing one by address."""

from __future__ import annotations


def dask_runner(address: str | None = None, n_workers: int = 2):
    """A DaskTaskRunner: connects to `address`, or starts a local cluster of single-threaded worker processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    # Dask's nanny starts each worker with OMP_NUM_THREADS=1, so torch in a worker uses one core.
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True})
