"""A grid sweep over beta x latent dim, trained in parallel on a Dask cluster (local, or one at --dask-address)."""

from __future__ import annotations

from itertools import product
from pathlib import Path

from prefect import flow

from digitgen.config import PipelineConfig
from tasks.ingest import download_data, resolve_version
from tasks.scale import dask_runner
from tasks.sweep import summarize_sweep, train_and_score
from tasks.validate import validate_data


@flow(name="digit-sweep")
def sweep(
    betas: list[float] = (0.5, 1.0, 2.0),
    latent_dims: list[int] = (2, 8, 16),
    dataset: str | None = None,
    data_version: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    is_samples: int | None = None,
    data_root: Path | None = None,
    data_source: Path | None = None,
    out: Path | None = None,
    run_name: str | None = None,
    device: str | None = None,
) -> dict:
    """Train a VAE per (beta, latent dim) on the flow's task runner; returns the results and the best setting."""
    settings = {k: v for k, v in locals().items() if v is not None and k not in ("betas", "latent_dims")}
    base = PipelineConfig(progress=False, **settings)
    data = download_data(base.dataset, base.data_root, base.data_source)
    version = resolve_version(base.dataset, base.data_root, base.data_version)
    base = base.model_copy(update={"data_version": version["id"]})
    validate_data(base.dataset, data["data_root"], data["fingerprint"])
    sweep_dir = base.out / f"sweep-{base.run_name}"
    futures = [
        train_and_score.submit(
            PipelineConfig(**{**base.model_dump(), "beta": b, "latent_dim": d}), str(sweep_dir / f"beta{b:g}-z{d}")
        )
        for b, d in product(betas, latent_dims)
    ]
    return summarize_sweep([f.result() for f in futures], list(betas), list(latent_dims), str(sweep_dir))


def run_sweep(dask_address: str | None = None, n_workers: int = 2, **parameters) -> dict:
    """Run the sweep on a Dask cluster: a local one with `n_workers` processes, or the one at `dask_address`."""
    return sweep.with_options(task_runner=dask_runner(dask_address, n_workers))(**parameters)
