"""Task runners for scaling out: a Dask cluster, local by default or an existing one by address."""

from __future__ import annotations

import os


def dask_runner(address: str | None = None, n_workers: int = 2):
    """A DaskTaskRunner: connects to `address`, or starts a local cluster of single-threaded worker processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    threads = str(worker_threads(n_workers))  # torch in each worker uses its share of the cores, not all of them
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        }  # fmt: skip
    )


def worker_threads(parallel: int) -> int:
    """Torch threads per task when `parallel` tasks share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, parallel))
