"""Sweep stages: train and score one grid point; gather the grid into a table, a heatmap and the best setting."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from digitgen.figures.plots import png_data_uri, save_heatmap
from digitgen.io import write_json
from digitgen.limits import TRAINING, held
from digitgen.registry import run_record, tracking
from models.checkpoint import load_checkpoint
from models.metrics import iwae_nll, vae_terms
from models.train import autocast_dtype
from tasks.common import logger, markdown_artifact, table_artifact
from tasks.data import tensors
from tasks.train import train_model


@task(cache_policy=NONE)
def open_sweep(base: PipelineConfig, sweep_dir: str, betas: list[float], latent_dims: list[int]) -> str:
    """The sweep's parent MLflow run (its grid points are child runs); returns its id. Fails at once, before any
    training, when the tracking store cannot be reached."""
    store = tracking.Store.open(base.out, base.tracking_uri)
    params = {
        **base.model_dump(mode="json", exclude={"resume", "beta", "latent_dim"}),
        "betas": betas,
        "latent_dims": latent_dims,
    }
    run_id = store.start_run(
        base.dataset,
        Path(sweep_dir).name,
        params,
        {
            "digitgen.data_version": base.data_version,
            "digitgen.run_dir": str(Path(sweep_dir).resolve()),
            "mlflow.source.git.commit": run_record.git_commit(),
        },
    )
    logger().info("MLflow parent run of the sweep: %s", run_id)
    return run_id


@task(cache_policy=NONE, task_run_name="vae beta={config.beta} latent={config.latent_dim}")
def train_and_score(config: PipelineConfig, run_dir: str, parent_run_id: str | None = None) -> dict:
    """Train one VAE and return its test NLL and negative ELBO; tracked as a child run of the sweep's MLflow run."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    store = tracking.Store.open(config.out, config.tracking_uri) if parent_run_id else None
    if store:
        run_id = store.start_run(
            config.dataset,
            f"{config.run_name}-{Path(run_dir).name}",
            config.model_dump(mode="json", exclude={"resume"}),
            {
                "mlflow.parentRunId": parent_run_id,
                "digitgen.data_version": config.data_version,
                "digitgen.run_dir": str(Path(run_dir).resolve()),
            },
        )
    with held(TRAINING, f"Sweep point beta={config.beta:g} latent={config.latent_dim}", logger()):
        trained = train_model("vae", config, run_dir)
    _, test, _, device = tensors(config, with_train=False)
    vae = load_checkpoint(trained.checkpoint, device)
    torch.manual_seed(config.seed)
    nll, se = iwae_nll(
        vae, test, k=config.is_samples, dtype=autocast_dtype(config.precision, device, vae, config.batch_size)
    )
    result = {
        "beta": config.beta,
        "latent_dim": config.latent_dim,
        "test_nll_is_nats": nll,
        "nll_stderr": se,
        "test_neg_elbo_nats": vae_terms(vae, test)["neg_elbo"],
        "train_seconds": trained.seconds,
        "run_dir": run_dir,
    }
    if store:
        store.log_steps(run_id, run_record.epoch_metrics({"vae": trained.history}))
        store.log_metrics(run_id, {f"vae.{k}": v for k, v in result.items() if k not in ("beta", "latent_dim")})
        store.finish(run_id)
    return result


@task(cache_policy=NONE)
def summarize_sweep(
    results: list[dict],
    betas: list[float],
    latent_dims: list[int],
    sweep_dir: str,
    base: PipelineConfig | None = None,
    parent_run_id: str | None = None,
) -> dict:
    """sweep.json, sweep_nll.png and the `sweep-results` / `sweep-report` artifacts; names the best setting."""
    out = Path(sweep_dir)
    best = min(results, key=lambda r: r["test_nll_is_nats"])
    grid = [
        [next(r["test_nll_is_nats"] for r in results if r["beta"] == b and r["latent_dim"] == d) for d in latent_dims]
        for b in betas
    ]
    plot = save_heatmap(
        out / "sweep_nll.png",
        grid,
        betas,
        latent_dims,
        "beta",
        "latent dim",
        "VAE test NLL over the sweep (lower is better)",
    )
    summary = {"results": results, "best": best}
    write_json(out / "sweep.json", summary)
    rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k != "run_dir"} for r in results]
    table_artifact("sweep-results", rows, "VAE sweep: test NLL (nats per image) per beta and latent dim")
    line = (
        f"Best: beta {best['beta']:g}, latent dim {best['latent_dim']} with test NLL "
        f"{best['test_nll_is_nats']:.2f} ± {best['nll_stderr']:.2f} nats per image."
    )
    markdown_artifact(
        "sweep-report",
        f"# digitgen sweep\n\n{line}\n\n![NLL over the grid]({png_data_uri(plot)})\n",
        "VAE sweep over beta and latent dim",
    )
    logger().info(line)
    if parent_run_id:
        store = tracking.Store.open(base.out, base.tracking_uri)
        store.log_metrics(
            parent_run_id,
            {
                "best.test_nll_is_nats": best["test_nll_is_nats"],
                "best.beta": best["beta"],
                "best.latent_dim": best["latent_dim"],
            },
        )
        store.log_files(parent_run_id, [out / "sweep.json", plot])
        store.finish(parent_run_id)
    return summary
