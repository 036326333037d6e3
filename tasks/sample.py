"""Stage 5: decode prior draws with both models, and reconstruct test images."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from digitgen.config import PipelineConfig
from digitgen.data.datasets import get_dataset
from digitgen.figures.plots import save_image_panels, save_reconstructions, save_rows, save_samples
from models.checkpoint import load_checkpoint
from models.latent import decode_images
from models.samplers import SAMPLERS, draw_codes, load_mixtures
from tasks.common import logger
from tasks.data import tensors
from tasks.results import Samplers


@task(cache_policy=NONE)
def generate_samples(
    config: PipelineConfig, run_dir: str, vae_ckpt: str, ae_ckpt: str, samplers: Samplers | None = None
) -> dict[str, str]:
    """samples_vae.png, samples_ae.png (the same 64 prior draws) and reconstructions.png; with fitted samplers also
    samplers.png (each model from each sampler) and on_demand.png (the VAE's chosen classes, one row per class)."""
    run = Path(run_dir)
    _, test, _, device = tensors(config, with_train=False)
    vae, ae = load_checkpoint(vae_ckpt, device), load_checkpoint(ae_ckpt, device)
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # a pixel head draws its pixels from the global generator
    z = torch.randn(64, config.latent_dim, generator=g).to(device)
    if vae.prior is None:
        vae_title, ae_title, z_vae = "VAE: decoded draws from N(0, I)", "AE: the same N(0, I) draws, decoded", z
    else:  # the VAE's own (learned) prior; the AE has none, and gets N(0, I)
        vae_title, ae_title = "VAE: decoded draws from its learned prior", "AE: decoded draws from N(0, I)"
        z_vae = vae.sample_prior(64, torch.Generator().manual_seed(config.seed)).to(device)
    files = {
        "samples_vae": save_samples(run / "samples_vae.png", decode_images(vae, z_vae), vae_title),
        "samples_ae": save_samples(run / "samples_ae.png", decode_images(ae, z), ae_title),
    }
    if samplers and samplers.path:
        spec = get_dataset(config.dataset)
        panels, mixtures = [], {kind: load_mixtures(samplers.path, kind) for kind in ("vae", "ae")}
        for kind, model in (("VAE", vae), ("AE", ae)):
            for name in SAMPLERS:
                z, _ = draw_codes(name, 36, model, torch.Generator().manual_seed(config.seed), mixtures[kind.lower()])
                panels.append((f"{kind} from {name}", decode_images(model, z.to(device)), 6))
        files["samplers"] = save_image_panels(
            run / "samplers.png", panels, "Decoded draws from each model's prior and from the fitted mixtures", cols=2
        )
        rows = []
        for c, name in enumerate(spec.classes):
            z, _ = draw_codes("gmm", 12, vae, g, mixtures["vae"], cls=c)
            rows.append((name, decode_images(vae, z.to(device))))
        files["on_demand"] = save_rows(run / "on_demand.png", rows, f"VAE: {spec.items} on demand, one row per class")
    x = test[torch.randperm(test.shape[0], generator=g)[:12].to(device)]
    with torch.inference_mode():
        vae_mu, _ = vae.encode(x)
        recon_ae, recon_vae = torch.sigmoid(ae.decode(ae.encode(x))), torch.sigmoid(vae.decode(vae_mu))
    files["reconstructions"] = save_reconstructions(
        run / "reconstructions.png", x, recon_ae, recon_vae, get_dataset(config.dataset).items
    )
    logger().info("Samples and reconstructions written to %s", run)
    return {k: str(v) for k, v in files.items()}
