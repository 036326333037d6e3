"""Stage 3b: fit the ex-post samplers, a Gaussian mixture per class on each model's codes of the training images."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from digitgen.data.datasets import get_dataset
from models.checkpoint import load_checkpoint
from models.latent import codes
from models.samplers import SamplerError, fit_class_mixtures, save_mixtures
from models.train import pick_device
from tasks.common import logger
from tasks.data import train_set
from tasks.results import Samplers


@task(cache_policy=NONE)
def fit_samplers(config: PipelineConfig, run_dir: str, vae_ckpt: str, ae_ckpt: str) -> Samplers:
    """samplers.pt in the run folder: per-class mixtures over the VAE's posterior means and over the AE's codes
    (none, why, and a warning, when a class has too few training images for one)."""
    started = time.perf_counter()
    device = pick_device(config.device)
    images, labels = train_set(config)
    images = images.unsqueeze(1).to(device)  # uint8: codes() scales it batch by batch
    n_classes = get_dataset(config.dataset).n_classes
    try:
        fitted = {
            kind: fit_class_mixtures(codes(load_checkpoint(ckpt, device), images), labels, n_classes, seed=config.seed)
            for kind, ckpt in (("vae", vae_ckpt), ("ae", ae_ckpt))
        }
    except SamplerError as e:
        logger().warning("No samplers fitted: %s; the run samples from N(0, I) only", e)
        return Samplers(path=None, why=str(e))
    path = Path(run_dir) / "samplers.pt"
    save_mixtures(path, fitted, components=fitted["vae"].means.shape[1], n_train=len(labels))
    logger().info(
        "Samplers fitted (%d components per class, %d images) in %.1f s -> %s",
        fitted["vae"].means.shape[1],
        len(labels),
        time.perf_counter() - started,
        path,
    )
    return Samplers(path=str(path))
