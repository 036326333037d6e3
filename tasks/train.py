"""Stage 3: train the VAE and the AE, with a resumable checkpoint after every epoch."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from models.checkpoint import save_checkpoint
from models.nets import AE, VAE
from models.train import fit
from tasks.common import logger
from tasks.data import tensors


def _train(kind: str, config: PipelineConfig, run_dir: str) -> dict:
    log = logger()
    train, test, _, device = tensors(config)
    torch.manual_seed(config.seed)
    model = (VAE if kind == "vae" else AE)(config.latent_dim, tuple(config.hidden)).to(device)
    ckpt_dir = Path(run_dir) / "checkpoints"
    settings = config.model_dump(mode="json")
    started = time.perf_counter()
    log.info(
        "Training %s on %d images (%s, %d epochs, batch %d)",
        kind.upper(),
        len(train),
        device,
        config.epochs,
        config.batch_size,
    )

    def on_epoch(record: dict, state: dict) -> None:
        path = ckpt_dir / f"{kind}-epoch-{record['epoch']:03d}.pt"
        save_checkpoint(path, {**state, "config": settings})
        for old in ckpt_dir.glob(f"{kind}-epoch-*.pt"):  # keep only the newest complete epoch
            if old != path:
                old.unlink(missing_ok=True)
        log.info(
            "%s epoch %d/%d: train %.2f, test %.2f nats/image (%.1f s)", kind.upper(), record["epoch"],
            config.epochs, record["train_loss"], record["test_loss"], time.perf_counter() - started,
        )  # fmt: skip

    history = fit(
        model, train, test, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        beta=config.beta if kind == "vae" else 0.0, seed=config.seed, on_epoch=on_epoch, progress=config.progress,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    final = Path(run_dir) / f"{kind}.pt"
    save_checkpoint(final, {"arch": model.arch(), "model": model.state_dict(), "epoch": config.epochs,
                            "config": settings, "history": history})  # fmt: skip
    log.info("%s trained in %.1f s -> %s", kind.upper(), seconds, final)
    return {"checkpoint": str(final), "history": history, "seconds": seconds}


@task(cache_policy=NONE)
def train_vae(config: PipelineConfig, run_dir: str) -> dict:
    """Train the VAE: BCE + beta * KL."""
    return _train("vae", config, run_dir)


@task(cache_policy=NONE)
def train_ae(config: PipelineConfig, run_dir: str) -> dict:
    """Train the AE: BCE alone."""
    return _train("ae", config, run_dir)
