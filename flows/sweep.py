"""A grid sweep over beta x latent dim, trained in parallel on a Dask cluster (local, or one at --dask-address)."""

from __future__ import annotations

import inspect
from itertools import product
from typing import Annotated

from prefect import flow
from pydantic import Field

from digitgen.config import SWEEP_GRID, SWEEP_SETTINGS, PipelineConfig
from digitgen.flow_params import settings_flow
from tasks.ingest import download_data, resolve_version
from tasks.scale import dask_runner
from tasks.sweep import open_sweep, summarize_sweep, train_and_score
from tasks.validate import show_validation, validate_data

GRID = [
    inspect.Parameter(
        "betas",
        inspect.Parameter.KEYWORD_ONLY,
        default=SWEEP_GRID["betas"],
        annotation=Annotated[list[float], Field(min_length=1, description="the KL weights (beta) of the grid")],
    ),
    inspect.Parameter(
        "latent_dims",
        inspect.Parameter.KEYWORD_ONLY,
        default=SWEEP_GRID["latent_dims"],
        annotation=Annotated[list[int], Field(min_length=1, description="the latent sizes of the grid")],
    ),
]


@flow(name="digit-sweep")
@settings_flow(SWEEP_SETTINGS, before=GRID)
def sweep(betas: list[float], latent_dims: list[int], **settings) -> dict:
    """Train a VAE per (beta, latent dim) on the flow's task runner; returns the results and the best setting."""
    settings = {k: v for k, v in settings.items() if v is not None}
    base = PipelineConfig(progress=False, **settings)
    data = download_data(base.dataset, base.data_root, base.data_source)
    version = resolve_version(base.dataset, base.data_root, base.data_version)
    base = base.model_copy(update={"data_version": version["id"]})
    checked = validate_data(base.dataset, data["data_root"], data["fingerprint"], return_state=True)
    show_validation(checked.result(), cached=checked.name == "Cached")  # result() raises if validation failed
    sweep_dir = base.out / f"sweep-{base.run_name}"
    parent = open_sweep(base, str(sweep_dir), list(betas), list(latent_dims))  # the MLflow run of the whole grid
    futures = [
        train_and_score.submit(
            PipelineConfig(**{**base.model_dump(), "beta": b, "latent_dim": d}),
            str(sweep_dir / f"beta{b:g}-z{d}"),
            parent,
        )
        for b, d in product(betas, latent_dims)
    ]
    results = [f.result() for f in futures]
    return summarize_sweep(results, list(betas), list(latent_dims), str(sweep_dir), base, parent)


def run_sweep(dask_address: str | None = None, n_workers: int = 2, **parameters) -> dict:
    """Run the sweep on a Dask cluster: a local one with `n_workers` processes, or the one at `dask_address`."""
    return sweep.with_options(task_runner=dask_runner(dask_address, n_workers))(**parameters)
